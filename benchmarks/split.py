"""Time validation and split of a YouTube-VIS-2019-sized train.json on one core (goal: under 5 s), and what a
later job pays to read the dataset: the manifest (pipeline.manifest) against train.json.

Generates 2,238 videos (20-36 frames, mean ~27.6 as in the real file), ~2.2 tracks per video over 40 classes,
1280x720 and 640x360 frames, and realistic RLE: a moving ellipse per track, run-length encoded column by
column (compressed strings by default, `--rle list` for uncompressed counts). No images: validation runs
with check_files=False. Within one run the routes take turns, --repeats times, and the best CPU time is kept
(the machine may be shared): load + validate with the stdlib parser (the code before orjson) and with
pipeline.ytvis.load_ytvis (orjson); split + COCO; a later job's read of train.json (load_ytvis) and of the
manifest (load_manifest). Peak memory of one job's read: a child process per route (ru_maxrss). Prints the
timings and writes them as JSON with --json.

    python benchmarks/split.py [--rle str|list] [--json out.json] [--repeats 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from pipeline.io import write_json_atomic  # noqa: E402
from pipeline.manifest import load_manifest, write_manifest  # noqa: E402
from pipeline.split import SplitParams, split_summary, split_videos, to_coco  # noqa: E402
from pipeline.ytvis import _has_masks, load_ytvis, validate_ytvis, ytvis_json  # noqa: E402


class Clock:
    """Context manager measuring wall time and this process's CPU time, in seconds."""

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def ellipse_rle(height: int, width: int, cx: float, cy: float, ax: float,
                ay: float) -> tuple[list[int], list[float], int]:
    """Uncompressed column-major counts, XYWH box and area of a filled axis-aligned ellipse, computed per column."""
    xs = np.arange(max(0, int(np.ceil(cx - ax))), min(width - 1, int(np.floor(cx + ax))) + 1)
    half = ay * np.sqrt(np.clip(1.0 - ((xs - cx) / ax) ** 2, 0.0, None))
    y0 = np.clip(np.ceil(cy - half), 0, height - 1).astype(np.int64)
    y1 = np.clip(np.floor(cy + half), -1, height - 1).astype(np.int64)
    keep = y1 >= y0
    xs, y0, y1 = xs[keep], y0[keep], y1[keep]
    if xs.size == 0:
        return [height * width], [0.0, 0.0, 0.0, 0.0], 0
    starts = xs * height + y0  # flat column-major index of each column's run
    lengths = y1 - y0 + 1
    ends = starts + lengths
    gaps = starts - np.r_[0, ends[:-1]]
    counts = np.empty(2 * xs.size + 1, np.int64)
    counts[0:-1:2], counts[1::2], counts[-1] = gaps, lengths, height * width - ends[-1]
    box = [float(xs[0]), float(y0.min()), float(xs[-1] - xs[0] + 1), float(y1.max() - y0.min() + 1)]
    return counts.tolist(), box, int(lengths.sum())


def generate(path: Path, rle: str, seed: int = 0, videos: int = 2238, classes: int = 40) -> dict[str, int]:
    """Write a YouTube-VIS-sized train.json to `path`; returns its counts."""
    rng = np.random.default_rng(seed)
    class_weights = np.r_[8.0, np.ones(classes - 1)]  # 'person' is far more frequent than other classes
    class_weights /= class_weights.sum()
    out_videos, annotations, masks = [], [], 0
    for k in range(videos):
        vid = k + 1
        height, width = (720, 1280) if rng.random() < 0.8 else (360, 640)
        length = int(rng.integers(20, 37))
        out_videos.append({"id": vid, "width": width, "height": height, "length": length,
                           "file_names": [f"{k:010x}/{5 * t:05d}.jpg" for t in range(length)]})
        for j in range(int(rng.choice([1, 1, 1, 2, 2, 2, 3, 3, 4]))):  # ~2.1 tracks per video
            ax, ay = width * rng.uniform(0.05, 0.25), height * rng.uniform(0.08, 0.35)
            cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
            vx, vy = rng.normal(0, 6, 2)
            absent = rng.random(length) < 0.05
            segs, boxes, areas = [], [], []
            for t in range(length):
                if absent[t]:
                    segs.append(None), boxes.append(None), areas.append(None)
                    continue
                counts, box, area = ellipse_rle(height, width, cx + vx * t, cy + vy * t,
                                                ax * (1 + 0.01 * t), ay * (1 - 0.005 * t))
                if rle == "str":
                    counts = mask_utils.frPyObjects([{"size": [height, width], "counts": counts}],
                                                    height, width)[0]["counts"].decode("ascii")
                segs.append({"size": [height, width], "counts": counts}), boxes.append(box), areas.append(area)
                masks += 1
            annotations.append({"id": len(annotations) + 1, "video_id": vid,
                                "category_id": int(rng.choice(classes, p=class_weights)) + 1, "iscrowd": 0,
                                "height": height, "width": width, "segmentations": segs, "bboxes": boxes,
                                "areas": areas})
    data = {"info": {"description": "benchmark"}, "licenses": [], "videos": out_videos,
            "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}", "supercategory": "object"} for c in range(1, classes + 1)]}
    with open(path, "w") as f:
        json.dump(data, f)
    return {"videos": videos, "tracks": len(annotations), "masks": masks,
            "frames": sum(v["length"] for v in out_videos), "bytes": path.stat().st_size}


def load_with_stdlib_json(root: Path) -> None:
    """load_ytvis as it was before orjson: the stdlib parser, then the same validation."""
    data = (root / "train.json").read_bytes()
    raw = json.loads(data)
    validate_ytvis(raw, root, root / "train.json", "", _has_masks(raw["annotations"]))


def peak_memory_mib(code: str) -> float:
    """Peak resident memory (MiB) of a child Python running `code`: its VmHWM, read by the child itself (the
    rusage of a child forked from this large process would count this process's pages)."""
    report = "; print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    run = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    return int(run.stdout.split()[-1]) / 1024


def main() -> int:
    """Generate, then time the routes in turns, the split, the manifest and building the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rle", choices=["str", "list"], default="str")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument("--repeats", type=int, default=3, help="time each route this often, keep the best")
    parser.add_argument("--cache", type=Path, help="keep the generated train.json here and reuse it next time")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cached = args.cache / f"train_{args.rle}.json" if args.cache else None
        if cached and cached.with_suffix(".sizes.json").is_file():
            sizes = json.loads(cached.with_suffix(".sizes.json").read_text())
            (root / "train.json").symlink_to(cached.resolve())
        else:
            t0 = time.perf_counter()
            sizes = generate(root / "train.json", args.rle)
            print(f"generated {sizes} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                os.replace(root / "train.json", cached)
                (root / "train.json").symlink_to(cached.resolve())
                write_json_atomic(cached.with_suffix(".sizes.json"), sizes)
        clocks: dict[str, list[Clock]] = {name: [] for name in ("load_stdlib_json", "load_and_validate",
                                                                "split_and_coco", "job_reads_train_json",
                                                                "job_reads_manifest")}
        manifest = root / "manifest.json"
        for _ in range(args.repeats):  # routes in turns: the machine may be shared
            with Clock() as c:
                load_with_stdlib_json(root)
            clocks["load_stdlib_json"].append(c)
            with Clock() as c:
                dataset = load_ytvis(root, check_files=False)
            clocks["load_and_validate"].append(c)
            with Clock() as c:
                params = SplitParams(videos_per_class=10, seed=0)
                train_train, train_val = split_videos(dataset, params.videos_per_class, params.seed)
                coco = to_coco(dataset, train_val)
                summary = split_summary(dataset, train_train, train_val, params)
            clocks["split_and_coco"].append(c)
            with Clock() as write_manifest_clock:
                write_manifest(manifest, dataset)
            with Clock() as c:
                load_ytvis(root, check_files=False)
            clocks["job_reads_train_json"].append(c)
            with Clock() as c:
                load_manifest(manifest, root)
            clocks["job_reads_manifest"].append(c)
        with Clock() as write:
            out = root / "split"
            for name, obj in (("train_train.json", ytvis_json(dataset, train_train)),
                              ("train_val.json", ytvis_json(dataset, train_val)), ("train_val_coco.json", coco)):
                write_json_atomic(out / name, obj, indent=None)
        memory = {"job_reads_manifest_peak_mib": peak_memory_mib(
                      f"from pipeline.manifest import load_manifest; load_manifest({str(manifest)!r}, {tmp!r})"),
                  "job_reads_train_json_peak_mib": peak_memory_mib(
                      f"from pipeline.ytvis import load_ytvis; load_ytvis({tmp!r}, check_files=False)")}
        manifest_bytes = manifest.stat().st_size
    best = {name: min(runs, key=lambda c: c.cpu) for name, runs in clocks.items()}
    result = {"rle": args.rle, **sizes, "manifest_bytes": manifest_bytes, "repeats": args.repeats,
              **{f"{name}_cpu_s": round(c.cpu, 2) for name, c in best.items()},
              **{f"{name}_wall_s": round(c.wall, 2) for name, c in best.items()},
              "validate_and_split_cpu_s": round(best["load_and_validate"].cpu + best["split_and_coco"].cpu, 2),
              "validate_and_split_stdlib_json_cpu_s": round(best["load_stdlib_json"].cpu
                                                           + best["split_and_coco"].cpu, 2),
              "write_manifest_cpu_s": round(write_manifest_clock.cpu, 2),
              "write_outputs_cpu_s": round(write.cpu, 2), "write_outputs_wall_s": round(write.wall, 2),
              **{k: round(v) for k, v in memory.items()},
              "train_val_videos": len(train_val), "train_val_images": summary["ours"]["train_val"]["images"],
              "coco_annotations": len(coco["annotations"])}
    print(json.dumps(result, indent=1))
    print(f"validation + split: {result['validate_and_split_cpu_s']:.2f} s CPU on one core (stdlib json: "
          f"{result['validate_and_split_stdlib_json_cpu_s']:.2f} s), goal < 5 s; a later job reads train.json in "
          f"{result['job_reads_train_json_cpu_s']:.2f} s CPU, the manifest in "
          f"{result['job_reads_manifest_cpu_s']:.2f} s")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
