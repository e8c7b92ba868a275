"""Time rule subset_ap's bootstrap before and after a change of model/bootstrap.py, on a finished run's outputs.

Per experiment, model.subsets' `subset_metrics` (COCOeval matching per subset and IoU type, then the
replicates of every resample) runs once with each route, the routes taking turns in one process:
  before     model/bootstrap.py of commit --before (read with `git show`): pycocotools' `accumulate` once per
             resample, on the per-video merged entries of the drawn videos.
  after      model/bootstrap.py of this checkout: every resample at once from the detections ranked once.
CPU time of the process (`time.process_time`; one thread) and wall time, in all and in the replicates (the
resampling; the rest is COCOeval's matching and the point estimate); then whether both routes give the same
subsets JSON (values, intervals, replicates) and the same as the run's own subsets.json.

With --scale, instead: the after route's resampling alone at YouTube-VIS size (391 videos, 40 classes, 10 796
frames with 100 detections each), on rankings drawn at random (no COCOeval: its matching of a million masks is
not what is measured): CPU seconds of one (subset, IoU type)'s 300 replicates and the peak resident memory.

    python benchmarks/bootstrap.py --run RUN_DIR [--exp ours boxinst] [--before 81b49c9] [--json out.json]
    python benchmarks/bootstrap.py --scale [--json out.json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not benchmarks/ (its model.py)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from typing import Any  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

import model.subsets as subsets  # noqa: E402
from model import bootstrap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def module_at(commit: str) -> types.ModuleType:
    """model/bootstrap.py as it was at `commit`, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:model/bootstrap.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"bootstrap_{commit}")
    exec(compile(source, f"{commit}:model/bootstrap.py", "exec"), module.__dict__)
    return module


def timed(route: types.ModuleType, gt: dict, results: list, subset_ids: dict,
          params: subsets.SubsetParams) -> tuple[dict[str, Any], dict[str, float]]:
    """subset_metrics with `route`'s replicates: its output (as JSON gives it back); CPU and wall seconds, in
    all and in the replicates (the resampling)."""
    resampling = {"cpu_s": 0.0, "wall_s": 0.0}

    def replicates(*args: Any) -> dict[str, list[float | None]]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = route.replicates(*args)
        resampling["cpu_s"] += time.process_time() - cpu
        resampling["wall_s"] += time.perf_counter() - wall
        return out

    cpu, wall = time.process_time(), time.perf_counter()
    with mock.patch.object(subsets, "replicates", replicates):
        out, _ = subsets.subset_metrics(gt, results, subset_ids, params)
    return json.loads(json.dumps(out)), {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                                         "resampling_cpu_s": resampling["cpu_s"],
                                         "resampling_wall_s": resampling["wall_s"]}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two subset_metrics outputs differ: subset/IoU type/stat/field (replicate index), both values."""
    out = []
    for name, per_type in a.items():
        for iou_type in subsets.IOU_TYPES:
            for stat, x in per_type[iou_type].items():
                y = b[name][iou_type][stat]
                for field in ("value", "interval"):
                    if x[field] != y[field]:
                        out.append(f"{name}/{iou_type}/{stat}/{field}: {x[field]} vs {y[field]}")
                out += [f"{name}/{iou_type}/{stat}/replicate {i}: {r} vs {s}"
                        for i, (r, s) in enumerate(zip(x["replicates"], y["replicates"])) if r != s]
    return out


def youtube_vis_scale(resamples: int = 300, seed: int = 0) -> dict[str, float]:
    """The after route's replicates at YouTube-VIS size on random rankings: 10 IoU thresholds, 4 area ranges,
    a million detections over 40 classes, 3 % (falling with the IoU threshold) true positives, 90 % (area
    all) or 30 % (the others) false positives. CPU seconds, chunk size, peak resident MB."""
    rng = np.random.default_rng(seed)
    num_videos, num_classes, num_thresholds, num_areas, recall_thresholds = 391, 40, 10, 4, np.linspace(0, 1, 101)
    video_of_detection = rng.integers(0, num_videos, 10_796 * 100).astype(np.int32)
    class_of_detection = rng.integers(0, num_classes, len(video_of_detection))
    ranked = []
    for k in range(num_classes):
        video = video_of_detection[class_of_detection == k]
        per_area = []
        for a in range(num_areas):
            tps = [rng.uniform(size=len(video)) < 0.03 * (1 - t / 12) for t in range(num_thresholds)]
            fps = [~tp & (rng.uniform(size=len(video)) < (0.9 if a == 0 else 0.3)) for tp in tps]
            per_area.append(bootstrap.Ranking([video[tp] for tp in tps], [video[fp] for fp in fps],
                                              [np.cumsum(tp, dtype=np.int32)[fp] for tp, fp in zip(tps, fps)],
                                              np.bincount(video, minlength=num_videos) // 25 + 1))
        ranked.append(per_area)
    counts = bootstrap.draw_counts(bootstrap.draws(num_videos, resamples, seed), num_videos)
    chunk = bootstrap.CHUNK_ELEMENTS // (num_thresholds * len(recall_thresholds) * num_classes * num_areas)
    cpu = time.process_time()
    for start in range(0, resamples, chunk):
        bootstrap.resampled_precision(ranked, counts[start:start + chunk], recall_thresholds)
    return {"cpu_s": time.process_time() - cpu, "chunk": chunk,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    """CLI: both routes per experiment, the times and the differences printed (and written with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished run's folder (results/ inside)")
    ap.add_argument("--scale", action="store_true", help="the after route alone at YouTube-VIS size")
    ap.add_argument("--exp", nargs="+", default=["ours", "boxinst"])
    ap.add_argument("--before", default="81b49c9", help="commit of the route to compare with")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.scale:
        report = youtube_vis_scale()
        print(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return
    if args.run is None:
        ap.error("--run RUN_DIR is needed (or --scale)")
    results_dir = args.run / "results"
    params = subsets.SubsetParams(**yaml.safe_load((REPO / "config.yaml").read_text())["evaluate"]["subsets"])
    gt = json.loads((results_dir / "split/train_val_coco.json").read_text())
    motion = {int(k): v for k, v in json.loads((results_dir / "eval/object_motion.json").read_text())["motion"].items()}
    subset_ids = subsets.define_subsets(gt, motion, params.motion_edges,
                                        subsets.camouflaged_tracks(results_dir / "synthetic/train.json"))
    routes = {"before": module_at(args.before), "after": bootstrap}
    report: dict[str, Any] = {"before_commit": args.before, "params": vars(params), "experiments": {}}
    for exp in args.exp:
        results = json.loads((results_dir / f"eval/{exp}/coco_results.json").read_text())
        outputs, times = {}, {}
        for name, route in routes.items():
            outputs[name], times[name] = timed(route, gt, results, subset_ids, params)
            print(exp, name, {k: round(v, 2) for k, v in times[name].items()}, flush=True)
        stored = json.loads((results_dir / f"eval/{exp}/subsets.json").read_text())["subsets"]
        diff = differences(outputs["before"], outputs["after"])
        diff_stored = differences(stored, outputs["after"])
        ratios = {key: times["before"][key] / times["after"][key] for key in ("cpu_s", "resampling_cpu_s")}
        print(f"{exp}: CPU {ratios['cpu_s']:.1f}x faster in all, {ratios['resampling_cpu_s']:.1f}x in the resampling; "
              f"{len(diff)} differences before/after, {len(diff_stored)} vs the run's subsets.json",
              *diff[:20], *diff_stored[:20], sep="\n  ")
        report["experiments"][exp] = {"times": times, "cpu_ratios": ratios, "differences": diff,
                                      "differences_vs_run": diff_stored}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
