"""Scale rehearsal: run the workflow's stages at real resolution on a sample of a YouTube-VIS-2019-sized dataset,
then extrapolate the full run's hours, disk, inodes and peak memory per job (written to docs/scale.md).

Three dataset folders are made under --work from one generated YouTube-VIS-sized train.json
(`benchmarks.split.generate`: 2,238 videos, ~62k frames, compressed RLE):
  full/   the whole train.json; real 1280x720 JPEGs (procedural texture, known motion) for the sample videos,
          which are shard 0 (--videos videos of --frames-small frames, all of class 1) and shard 1 (--videos
          videos of --frames-large frames) at flow.shard_size = --videos; every other frame a hard link to one
          filler JPEG of its size (the split and index jobs check that frames exist and read their headers; no
          job of run A decodes them).
  model/  shard 0's videos alone (train.json cut to them, hard-linked frames): a workflow small enough to train
          and evaluate the paper's network for a few iterations / frames on a CPU.
  dry/    the whole train.json and one empty folder per video: `snakemake -n` on config/ytvis2019.yaml.
Run A (`full/`): split, both frame indexes, flow (DIS) and affinity of shards 0 and 1, through snakemake.
Run B (`model/`): the `ours` experiment at the paper's sizes, `--iters` iterations, evaluated on its train_val.
Every job's time, CPU time and peak RSS come from Snakemake's `benchmark:` files (results/benchmarks/), so the
harness measures whatever the rules run. GPU rates are placeholders until given by --gpu-json
(benchmarks/gpu_check_gma.py --json) and --train-s-per-image.

    python benchmarks/scale.py --work /tmp/scale --doc docs/scale.md --json /tmp/scale/scale.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a bare checkout too
from benchmarks.split import generate  # noqa: E402
from pipeline.io import write_bytes_atomic, write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL_CONFIG = REPO / "config" / "ytvis2019.yaml"
HEIGHT, WIDTH = 720, 1280
MARGIN = 64  # px of texture beyond the frame on each side: the largest shift drawn
# Placeholder GPU rates, used until measured (docs/scale.md names them as such):
GMA_FPS_PLACEHOLDER = 10.0  # GMA 12 iterations, 1280x720, fp32, one GPU: an assumption of this rehearsal
TRAIN_S_PER_IMAGE_PLACEHOLDER = 0.10  # R-50 two-stream fwd+bwd per image per GPU at 800x1333: an assumption
EVAL_GPU_S_PER_FRAME_PLACEHOLDER = 0.05  # R-50 two-stream inference per frame at 800x1333: an assumption
# Run B trains one image per step at the paper's smallest scale: batch 2 at 800x1333 (two-stream R-50) peaks at
# over 9 GB on the CPU and was killed for memory on the 23 GB development VM shared by 7 engineers.
TRAIN_BATCH, TRAIN_MIN_SIZES, TRAIN_MAX_SIZE = 1, [640], 1138
EVAL_CPU_S_PER_FRAME_ISSUE13 = 0.24
KEEP_CHECKPOINTS = 2  # model/train.py keeps the newest 2 checkpoints (+ final.pt); run B saves one  # CPU mask conversion + RLE per 720p frame with 100 detections (issue #13)


# ---------------------------------------------------------------- dataset


def procedural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour texture (height, width, 3) uint8: bicubic upsampling of coarse noise plus grain."""
    coarse = rng.uniform(0, 255, (height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 3, (height, width, 3)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def shifted(texture: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The (HEIGHT, WIDTH) window of a margin-padded texture moved by (dx, dy) px: out(x) = texture(x - d)."""
    dx, dy = int(np.clip(dx, -MARGIN, MARGIN)), int(np.clip(dy, -MARGIN, MARGIN))
    return texture[MARGIN - dy:MARGIN - dy + HEIGHT, MARGIN - dx:MARGIN - dx + WIDTH]


def write_video_frames(root: Path, video: dict, tracks: list[dict], seed: int) -> None:
    """JPEGs of one 1280x720 video: a background translating by a whole-pixel velocity and each track's mask
    filled with its own texture moving with the track's box."""
    rng = np.random.default_rng(seed)
    size = (HEIGHT + 2 * MARGIN, WIDTH + 2 * MARGIN)
    background = procedural_texture(rng, *size)
    velocity = rng.integers(-3, 4, 2)
    textures = [procedural_texture(rng, *size) for _ in tracks]
    for t, name in enumerate(video["file_names"]):
        frame = shifted(background, *(velocity * t)).copy()
        for track, texture in zip(tracks, textures):
            seg = track["segmentations"][t]
            if seg is None:
                continue
            mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)
            start, now = track["bboxes"][0], track["bboxes"][t]
            moved = shifted(texture, round(now[0] - start[0]), round(now[1] - start[1]))
            frame[mask] = moved[mask]
        path = root / "JPEGImages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, path
        write_bytes_atomic(path, data.tobytes())


def cut_video(video: dict, tracks: list[dict], frames: int) -> None:
    """Keep the first `frames` frames of a video and its tracks (in place)."""
    video["length"], video["file_names"] = frames, video["file_names"][:frames]
    for track in tracks:
        for key in ("segmentations", "bboxes", "areas"):
            track[key] = track[key][:frames]


def choose_sample(data: dict, videos: int, frames_small: int, frames_large: int) -> tuple[list[dict], list[dict]]:
    """Renumber `data`'s videos so that shard 0 (ids 1..videos) holds 1280x720 videos whose tracks are all of
    category 1 cut to frames_small frames, and shard 1 other 1280x720 videos cut to frames_large frames; every
    sampled track is present in its frames. Returns the two groups of videos."""
    tracks_of: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        tracks_of.setdefault(ann["video_id"], []).append(ann)
    full_view = [v for v in data["videos"] if v["height"] == HEIGHT and v["width"] == WIDTH
                 and v["length"] >= frames_large and tracks_of.get(v["id"])
                 and all(s is not None for a in tracks_of[v["id"]] for s in a["segmentations"][:frames_large])]
    person = [v for v in full_view if all(a["category_id"] == 1 for a in tracks_of[v["id"]])][:videos]
    taken = {v["id"] for v in person}
    other = [v for v in full_view if v["id"] not in taken][:videos]
    if len(person) < videos or len(other) < videos:
        raise SystemExit(f"the generated train.json has too few candidate videos for --videos {videos}")
    order = person + other + [v for v in data["videos"] if v["id"] not in taken | {v["id"] for v in other}]
    new_id = {v["id"]: k + 1 for k, v in enumerate(order)}
    for group, frames in ((person, frames_small), (other, frames_large)):
        for v in group:
            cut_video(v, tracks_of[v["id"]], frames)
    for ann in data["annotations"]:
        ann["video_id"] = new_id[ann["video_id"]]
    for v in data["videos"]:
        v["id"] = new_id[v["id"]]
    data["videos"].sort(key=lambda v: v["id"])
    return person, other


def build_datasets(work: Path, videos: int, frames_small: int, frames_large: int, seed: int) -> dict:
    """Write work/full, work/model and work/dry (module docstring); returns the full dataset's counts."""
    for name in ("full", "model", "dry"):
        shutil.rmtree(work / name, ignore_errors=True)
        (work / name).mkdir(parents=True)
    start = time.perf_counter()
    counts = generate(work / "generated.json", "str", seed=seed)
    data = json.loads((work / "generated.json").read_text())
    (work / "generated.json").unlink()
    person, other = choose_sample(data, videos, frames_small, frames_large)
    tracks_of: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        tracks_of.setdefault(ann["video_id"], []).append(ann)
    full = work / "full"
    for v in person + other:
        write_video_frames(full, v, tracks_of[v["id"]], seed=v["id"])
    sampled = {v["id"] for v in person + other}
    sample_frame = cv2.imread(str(full / "JPEGImages" / person[0]["file_names"][0]))
    fillers = {}  # (height, width) -> one JPEG every other frame of that size links to (checked by its header)
    for height, width in {(v["height"], v["width"]) for v in data["videos"]}:
        fillers[height, width] = work / f"filler_{width}x{height}.jpg"
        cv2.imwrite(str(fillers[height, width]), cv2.resize(sample_frame, (width, height)))
    for v in data["videos"]:
        (work / "dry" / "JPEGImages" / v["file_names"][0].split("/")[0]).mkdir(parents=True, exist_ok=True)
        if v["id"] in sampled:
            continue
        (full / "JPEGImages" / v["file_names"][0].split("/")[0]).mkdir(parents=True, exist_ok=True)
        for name in v["file_names"]:
            os.link(fillers[v["height"], v["width"]], full / "JPEGImages" / name)
    write_json_atomic(full / "train.json", data, indent=None)
    os.link(full / "train.json", work / "dry" / "train.json")
    small = dict(data, videos=person, annotations=[a for v in person for a in tracks_of[v["id"]]])
    write_json_atomic(work / "model" / "train.json", small, indent=None)
    for v in person:
        (work / "model" / "JPEGImages" / v["file_names"][0].split("/")[0]).mkdir(parents=True, exist_ok=True)
        for name in v["file_names"]:
            os.link(full / "JPEGImages" / name, work / "model" / "JPEGImages" / name)
    jpeg_bytes = [os.path.getsize(full / "JPEGImages" / n) for v in person + other for n in v["file_names"]]
    return {**counts, "frames": sum(v["length"] for v in data["videos"]), "bytes": (full / "train.json").stat().st_size,
            "build_s": time.perf_counter() - start,
            "sample_videos": 2 * videos, "sample_frames": len(jpeg_bytes),
            "jpeg_bytes_per_frame": float(np.mean(jpeg_bytes))}


# ---------------------------------------------------------------- running the workflow


def snakemake(workdir: Path, configs: list[Path], targets: list[str], cores: int, dry: bool = False) -> dict:
    """Run snakemake on the repository's Snakefile in `workdir`; returns wall and children's CPU seconds and
    the captured output. Raises with the log's tail when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), "--configfile", *map(str, configs), *(["-n"] if dry else []), "--", *targets]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MOWIS_ALLOW_CPU="1")  # run B trains the paper net
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{run.stderr[-6000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stdout": run.stdout}


def job_stats(stdout: str) -> dict[str, int]:
    """Jobs per rule from a dry run's 'Job stats' table."""
    rows = stdout.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    return {row.split()[0]: int(row.split()[1]) for row in rows if row.strip()}


def read_benchmarks(workdir: Path) -> dict[str, dict[str, float]]:
    """Every results/benchmarks/<rule>/<name>.tsv as {"<rule>/<name>": {s, cpu_time, max_rss, io_in, io_out}}."""
    rows = {}
    for path in sorted((workdir / "results" / "benchmarks").glob("*/*.tsv")):
        with open(path) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rows[f"{path.parent.name}/{path.stem}"] = {
            key: float(row[key]) if row.get(key, "NA") not in ("NA", "-", "") else 0.0
            for key in ("s", "cpu_time", "max_rss", "io_in", "io_out")}
    return rows


def measured_jobs(workdir: Path, configs: list[Path], jobs: dict[str, str], cores: int) -> dict[str, dict]:
    """Run each job {"<rule>/<name>": target} in turn, one snakemake call each (the targets in dependency
    order), and return its benchmark row plus `cpu_s`: the call's CPU (all its processes, getrusage) less that
    of a call with nothing to do. Snakemake's own `cpu_time` samples every 0.5 s, then every 30 s after 15 s,
    so it misses up to 30 s of a job's end; kept beside for reference."""
    calls = {name: snakemake(workdir, configs, [target], cores)["cpu_s"] for name, target in jobs.items()}
    idle = min(snakemake(workdir, configs, [target], cores)["cpu_s"] for target in list(jobs.values())[:2])
    rows = read_benchmarks(workdir)
    return {name: dict(rows[name], cpu_s=max(0.0, calls[name] - idle), idle_call_cpu_s=idle) for name in jobs}


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of a file or of everything under a folder."""
    if path.is_file():
        return path.stat().st_size, 1
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


# ---------------------------------------------------------------- extrapolation (pure arithmetic)


def fit_line(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """(a, b) of y = a + b x through two points (x0 != x1)."""
    b = (y1 - y0) / (x1 - x0)
    return y0 - b * x0, b


@dataclass(frozen=True)
class Measured:
    """What the rehearsal measured (seconds are CPU seconds unless named wall)."""
    split_cpu_s: float           # one job on the full-size train.json
    index_cpu_s: float           # the larger of the two frame_index jobs, full size
    flow_a_s: float              # flow job CPU = a + b * frames (DIS on the CPU)
    flow_b_s: float
    flow_estimate_share: float   # share of the flow job's per-frame CPU that is the estimator (the GPU's part)
    affinity_a_s: float          # affinity job CPU = a + b * frames
    affinity_b_s: float
    affinity_utilisation: float  # CPU seconds per wall second of an affinity job (threads it keeps busy)


@dataclass(frozen=True)
class FullRun:
    """The full run's size and the GPU rates (measured, or the placeholders)."""
    videos: int
    frames: int
    train_val_frames: int
    shard_size: int
    experiments: int
    iters: int
    batch: int
    gma_fps: float
    train_s_per_image: float     # per GPU
    eval_gpu_s_per_frame: float
    eval_cpu_s_per_frame: float


@dataclass(frozen=True)
class Machine:
    """Where the full run goes: cores, GPUs, concurrent GPU jobs of one GPU, threads per job, CPU job cap."""
    name: str
    cores: int
    gpus: int
    gpu_job_slots: int           # flow / evaluate jobs at once (the local profile: 1, each claims all GPUs)
    flow_threads: int
    affinity_threads: int
    evaluate_threads: int
    cpu_job_cap: int             # jobs at once (SLURM profile: jobs 100; a workstation: its cores)


def stage_hours(jobs: int, job_wall_s: float, slots: int) -> float:
    """Hours of `jobs` equal jobs of job_wall_s seconds, `slots` at a time."""
    return math.ceil(jobs / max(1, slots)) * job_wall_s / 3600.0


def extrapolate(m: Measured, run: FullRun, machine: Machine) -> dict[str, dict[str, float]]:
    """Per stage: jobs, seconds per job and hours on `machine`, and the total; stages run one after another."""
    shards = math.ceil(run.videos / run.shard_size)
    frames_per_shard = run.frames / shards
    cpu_per_frame = m.flow_b_s * (1.0 - m.flow_estimate_share)  # decode + encode + write, done by the CPU
    flow_job = m.flow_a_s + frames_per_shard * max(1.0 / run.gma_fps, cpu_per_frame / machine.flow_threads)
    affinity_job = (m.affinity_a_s + m.affinity_b_s * frames_per_shard) / max(
        1.0, min(m.affinity_utilisation, machine.affinity_threads))
    train_job = run.iters * run.batch * run.train_s_per_image / machine.gpus
    eval_job = run.train_val_frames * max(run.eval_gpu_s_per_frame,
                                          run.eval_cpu_s_per_frame / machine.evaluate_threads)
    cpu_slots = min(machine.cpu_job_cap, machine.cores // machine.affinity_threads)
    stages = {
        "split": (1, m.split_cpu_s, 1),
        "frame_index": (2, m.index_cpu_s, 2),
        "flow (GMA on GPU)": (shards, flow_job, machine.gpu_job_slots),
        "affinity": (shards, affinity_job, cpu_slots),
        "train": (run.experiments, train_job, 1),  # each experiment takes every GPU
        "evaluate": (run.experiments, eval_job, machine.gpu_job_slots),
    }
    out = {name: {"jobs": jobs, "job_s": job_s, "slots": slots, "hours": stage_hours(jobs, job_s, slots)}
           for name, (jobs, job_s, slots) in stages.items()}
    out["total"] = {"hours": sum(row["hours"] for row in out.values())}
    return out


def store_totals(bytes_a: float, bytes_b: float, files_a: float, files_b: float, frames: int,
                 groups: float) -> tuple[float, float]:
    """(bytes, files) of a store type over the full run: a per group of videos (the sample's shard: metadata
    and per-video files) + b per frame."""
    return groups * bytes_a + frames * bytes_b, groups * files_a + frames * files_b


# ---------------------------------------------------------------- the rehearsal


def write_config(path: Path, config: dict) -> Path:
    """Write a config override (JSON is YAML)."""
    path.write_text(json.dumps(config, indent=1))
    return path


def rehearse(args: argparse.Namespace) -> dict:
    """Build the datasets, run A, B and the dry run; returns every measurement."""
    work = args.work.resolve()
    made = work / "datasets.json"  # the datasets' counts and the arguments they were made with
    wanted = {"videos": args.videos, "frames_small": args.frames_small, "frames_large": args.frames_large,
              "seed": args.seed}
    if args.reuse and made.is_file() and json.loads(made.read_text())["args"] == wanted:
        sizes = json.loads(made.read_text())["sizes"]
    else:
        made.unlink(missing_ok=True)
        sizes = build_datasets(work, args.videos, args.frames_small, args.frames_large, args.seed)
        write_json_atomic(made, {"args": wanted, "sizes": sizes})
    done_a = work / "run_a.json"  # run A's measurements, kept for a --reuse after a failed run B
    if not (args.reuse and done_a.is_file()):
        done_a.unlink(missing_ok=True)
        shutil.rmtree(work / "run_a", ignore_errors=True)
    for name in ("run_b", "dry_run"):
        shutil.rmtree(work / name, ignore_errors=True)
    paper = yaml.safe_load(FULL_CONFIG.read_text())
    flow = {"estimator": "dis", "shard_size": args.videos, "dis": {"preset": "medium"}}
    cfg_a = write_config(work / "run_a.yaml", {"dataset": {"root": str(work / "full")}, "flow": flow})
    jobs_a = {"split/split": "results/split/summary.json",
              **{f"frame_index/{split}": f"results/index/{split}.h5" for split in ("train_train", "train_val")},
              **{f"{stage}/shard_{k}": f"results/{stage}/shard_{k}.zarr" for stage in ("flow", "affinity")
                 for k in (0, 1)}}
    if done_a.is_file():
        bench_a, run_a = json.loads(done_a.read_text())
    else:
        t0 = time.perf_counter()
        bench_a = measured_jobs(work / "run_a", [FULL_CONFIG, cfg_a], jobs_a, args.cores)
        run_a = {"wall_s": time.perf_counter() - t0}
        write_json_atomic(done_a, [bench_a, run_a])
    cfg_b = write_config(work / "run_b.yaml", {
        "dataset": {"root": str(work / "model")}, "flow": flow, "split": {"videos_per_class": 2},
        "model": {"weights": None}, "run": ["ours"],
        "train": {"iters": args.iters, "batch_size": TRAIN_BATCH, "warmup_iters": 1, "steps": [],
                  "schedule": "cosine", "checkpoint_every": args.iters, "min_sizes": TRAIN_MIN_SIZES,
                  "max_size": TRAIN_MAX_SIZE}})
    t0 = time.perf_counter()
    snakemake(work / "run_b", [FULL_CONFIG, cfg_b], ["results/index/train_val.h5", "results/index/train_train.h5",
                                                     "results/affinity/shard_0.zarr"], args.cores)
    bench_b = measured_jobs(work / "run_b", [FULL_CONFIG, cfg_b], {"train/ours": "results/train/ours/final.pt",
                                                                  "evaluate/ours": "results/eval/ours/metrics.json"},
                            args.cores)
    run_b = {"wall_s": time.perf_counter() - t0}
    cfg_dry = write_config(work / "dry.yaml", {"dataset": {"root": str(work / "dry")}})
    dry = snakemake(work / "dry_run", [FULL_CONFIG, cfg_dry], [], 16, dry=True)
    full_data = json.loads((work / "full" / "train.json").read_text())
    lengths = {v["id"]: v["length"] for v in full_data["videos"]}
    shard_frames = [sum(lengths[i] for i in range(k * args.videos + 1, (k + 1) * args.videos + 1)) for k in (0, 1)]
    steps = [json.loads((work / "run_a" / "logs" / "flow" / f"shard_{k}.json").read_text()).get("steps_seconds", {})
             for k in (0, 1)]
    metrics_b = json.loads((work / "run_b" / "results" / "eval" / "ours" / "metrics.json").read_text())
    records = [json.loads(line) for line in
               (work / "run_b" / "results" / "train" / "ours" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((work / "run_a" / "results" / "split" / "summary.json").read_text())
    stores = {f"{stage}/shard_{k}": tree_size(work / "run_a" / "results" / stage / f"shard_{k}.zarr")
              for stage in ("flow", "affinity") for k in (0, 1)}
    files = {name: tree_size(work / "run_a" / "results" / name) for name in
             ("split", "index/train_train.h5", "index/train_val.h5")}
    files["checkpoint"] = tree_size(work / "run_b" / "results" / "train" / "ours" / "final.pt")
    files["checkpoints"] = tree_size(work / "run_b" / "results" / "train" / "ours" / "checkpoints")  # one saved
    return {"git": git_head(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": sizes, "shard_frames": shard_frames, "flow_steps": steps,
            "run_a": run_a, "run_b": run_b,
            "dry_run": {"wall_s": dry["wall_s"], "cpu_s": dry["cpu_s"], "jobs": job_stats(dry["stdout"])},
            "benchmarks": {**{f"A:{k}": v for k, v in bench_a.items()}, **{f"B:{k}": v for k, v in bench_b.items()}},
            "train_step_s": records[-1]["step_s"], "train_batch": TRAIN_BATCH, "eval_frames": metrics_b["frames"],
            "train_val_frames": summary["ours"]["train_val"]["images"], "stores": stores, "files": files,
            "paper": {"shard_size": paper["flow"]["shard_size"], "experiments": len(paper["experiments"]),
                      "iters": paper["train"]["iters"], "batch": paper["train"]["batch_size"],
                      "checkpoint_every": paper["train"]["checkpoint_every"]}}


def measured_from(r: dict) -> Measured:
    """The extrapolation's inputs from a rehearsal's measurements."""
    b = r["benchmarks"]
    fa, fb = fit_line(r["shard_frames"][0], b["A:flow/shard_0"]["cpu_s"],
                      r["shard_frames"][1], b["A:flow/shard_1"]["cpu_s"])
    aa, ab = fit_line(r["shard_frames"][0], b["A:affinity/shard_0"]["cpu_s"],
                      r["shard_frames"][1], b["A:affinity/shard_1"]["cpu_s"])
    steps = r["flow_steps"][1]
    cpu_steps = sum(steps.get(k, 0.0) for k in ("decode", "estimate", "encode", "write"))
    share = steps["estimate"] / cpu_steps if cpu_steps else 0.0
    aff = [b[f"A:affinity/shard_{k}"] for k in (0, 1)]
    return Measured(split_cpu_s=b["A:split/split"]["cpu_s"],
                    index_cpu_s=max(b["A:frame_index/train_train"]["cpu_s"],
                                    b["A:frame_index/train_val"]["cpu_s"]),
                    flow_a_s=fa, flow_b_s=fb, flow_estimate_share=share, affinity_a_s=aa, affinity_b_s=ab,
                    affinity_utilisation=sum(x["cpu_s"] for x in aff) / sum(x["s"] for x in aff))


def gpu_rates(path: Path | None) -> tuple[float, str]:
    """GMA frames/s at 1280x720 fp32 from gpu_check_gma.py's JSON, or the placeholder; and where it came from."""
    if path is None:
        return GMA_FPS_PLACEHOLDER, "placeholder assumption (benchmarks/gpu_check_gma.py not yet run on a GPU)"
    rows = json.loads(path.read_text())["rows"]
    row = next(r for r in rows if (r["height"], r["width"], r["dtype"]) == (HEIGHT, WIDTH, "float32"))
    return row["frames_per_s"], f"measured: {path} ({json.loads(path.read_text())['info']['device']})"


MACHINES = [
    # GPU workstation, workflow/profiles/local: flow 4, affinity 2, evaluate 8 threads; GPU jobs one at a time
    Machine("(a) workstation, 16 cores, 1 GPU", cores=16, gpus=1, gpu_job_slots=1, flow_threads=4,
            affinity_threads=2, evaluate_threads=8, cpu_job_cap=16),
    # workflow/profiles/slurm: flow 8, affinity 4, evaluate 8 threads, jobs: 100; 8 GPUs in the GPU partition
    Machine("(b) SLURM profile, 8 GPUs", cores=100 * 4, gpus=8, gpu_job_slots=8, flow_threads=8,
            affinity_threads=4, evaluate_threads=8, cpu_job_cap=100),
]


# ---------------------------------------------------------------- report


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(r: dict, m: Measured, run: FullRun, gma_source: str, command: str) -> str:
    """docs/scale.md: the rehearsal's measurements and the full run's extrapolation, arithmetic shown."""
    s, b = r["sizes"], r["benchmarks"]
    shards = math.ceil(run.videos / run.shard_size)
    per_shard = run.frames / shards
    mib = 1 / 1024 ** 2

    def cpu_of(run: str) -> float:
        """CPU seconds of a run's measured jobs."""
        return sum(v["cpu_s"] for k, v in b.items() if k.startswith(run))

    frames_of = {"A:flow/shard_0": r["shard_frames"][0], "A:flow/shard_1": r["shard_frames"][1],
                 "A:affinity/shard_0": r["shard_frames"][0], "A:affinity/shard_1": r["shard_frames"][1],
                 "B:evaluate/ours": r["eval_frames"]}
    jobs = [[k, frames_of.get(k, ""), f"{v['s']:.1f}", f"{v['cpu_s']:.1f}", f"{v['cpu_time']:.1f}",
             f"{v['cpu_s'] / v['s']:.2f}" if v["s"] else "", f"{v['max_rss']:.0f}",
             f"{v['io_in']:.0f} / {v['io_out']:.0f}"] for k, v in b.items()]
    out = [
        "# Scale rehearsal: the full YouTube-VIS 2019 run, extrapolated from a measured sample",
        "",
        "Generated by `benchmarks/scale.py` (do not edit by hand; rerun it). The rehearsal, then this page:",
        "",
        f"    {r.get('command', command)}",
        f"    {command}",
        "",
        f"Rehearsal run {r['date']} at git {r['git']}; this page written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f}). Wall times on a shared machine "
        "are noisy: the extrapolation uses CPU seconds wherever it can. Each job runs in its own snakemake call; "
        "its CPU is the call's (getrusage of all its processes) less a call with nothing to do "
        f"({r['benchmarks']['A:split/split']['idle_call_cpu_s']:.1f} s). Snakemake's `cpu_time` samples the job "
        "every 0.5 s for 15 s, then every 30 s, and misses up to 30 s of a long job's end: shown for reference.",
        "",
        "## What ran",
        "",
        f"- A YouTube-VIS-2019-sized `train.json` (`benchmarks/split.py`'s generator): {s['videos']:,} videos, "
        f"{s['frames']:,} frames, {s['tracks']:,} tracks, {s['bytes'] / 1e6:.0f} MB with compressed RLE.",
        f"- Real 1280×720 JPEGs (procedural texture, background and objects moving by known whole-pixel "
        f"shifts) for {s['sample_videos']} videos, {s['sample_frames']} frames: flow shard 0 = "
        f"{r['shard_frames'][0]} frames, shard 1 = {r['shard_frames'][1]} frames, shard size "
        f"{s['sample_videos'] // 2}. Mean JPEG: {s['jpeg_bytes_per_frame'] / 1024:.0f} KiB per frame.",
        f"- Run A, through snakemake on the full `train.json` (every job parses it, as at full size): split, "
        f"both frame indexes, flow (DIS medium on the CPU) and affinity of shards 0 and 1: "
        f"{r['run_a']['wall_s']:.0f} s wall, the jobs' CPU {cpu_of('A:'):.0f} s.",
        f"- Run B, through snakemake on shard 0's videos alone: the `ours` experiment with the paper's network "
        f"(config/ytvis2019.yaml; no pretrained weights) at the paper's smallest training scale, a few "
        f"iterations at batch {r['train_batch']}, evaluated at the paper's test size on its {r['eval_frames']} train_val frames: "
        f"{r['run_b']['wall_s']:.0f} s wall, the two jobs' CPU {cpu_of('B:'):.0f} s.",
        f"- Dataset generation and frames: {s['build_s']:.0f} s wall." if "build_s" in s else
        "- Dataset generation and frames: made by an earlier call (--reuse), not timed.",
        "",
        "## Jobs as measured (wall, max RSS, I/O: Snakemake `benchmark:` files results/benchmarks/<rule>/<job>.tsv)",
        "",
        table(["job (run:rule/wildcards)", "frames", "wall s", "CPU s", "Snakemake cpu_time", "CPU/wall",
               "max RSS MiB",
               "io in / out MB"], jobs),
        "",
        "Per-frame figures:",
        "",
        f"- flow job CPU = a + b × frames, through the two shards: a = {m.flow_a_s:.2f} s, b = {m.flow_b_s:.3f} "
        f"s/frame ({1 / m.flow_b_s:.1f} frames per CPU-second, DIS medium at 1280×720, decode + estimate + "
        f"encode + write); the estimator is {m.flow_estimate_share:.0%} of the per-step CPU (the job's "
        "logs/flow/shard_1.json `steps_seconds`), the rest is what stays on the CPU with GMA on a GPU.",
        f"- affinity job CPU = a + b × frames: a = {m.affinity_a_s:.2f} s, b = {m.affinity_b_s:.4f} s/frame "
        f"({1 / m.affinity_b_s:.1f} frames per CPU-second); it kept {m.affinity_utilisation:.2f} CPUs busy.",
        f"- train on the CPU (one thread, the paper's R-50 two-stream at short side {TRAIN_MIN_SIZES[0]}, long side "
        f"≤ {TRAIN_MAX_SIZE}): "
        f"{r['train_step_s']:.1f} s wall for the last iteration of {r['train_batch']} image(s) (metrics.jsonl `step_s`, "
        f"on the loaded machine); the job's CPU, {b['B:train/ours']['cpu_s']:.1f} s for all its iterations and "
        "start-up, bounds the CPU per iteration. Not used for the GPU figures below.",
        f"- evaluate on the CPU: {b['B:evaluate/ours']['cpu_s'] / r['eval_frames']:.1f} CPU-s per frame "
        "(job total / frames: start-up included, an upper bound). Not used for the GPU figures below.",
        "",
        "## Assumptions (placeholders until measured on a GPU)",
        "",
        f"- GMA frames/s at 1280×720, fp32, 12 iterations: **{run.gma_fps:g}**, {gma_source}.",
        f"- Training: **{run.train_s_per_image:g} s per image per GPU** (R-50 two-stream at 800×1333, forward + "
        "backward): placeholder assumption, to be replaced by `benchmarks/train.py --cuda` "
        "(`--train-s-per-image`).",
        f"- Evaluation: **{run.eval_gpu_s_per_frame:g} s per frame** of GPU inference (placeholder assumption) "
        f"and **{run.eval_cpu_s_per_frame:g} CPU-s per frame** of mask conversion + RLE (issue #13's figure "
        "for 720p with 100 detections), spread over the job's threads.",
        "",
        "## The full run",
        "",
        f"{run.videos:,} videos, {run.frames:,} frames, {shards} shards of {run.shard_size} videos "
        f"({per_shard:.0f} frames each on average), {run.train_val_frames:,} train_val frames (run A's split), "
        f"{run.experiments} experiments of {run.iters:,} iterations at batch {run.batch}. Stages one after "
        "another (flow and affinity of different shards could overlap: an upper bound).",
        "",
    ]
    for machine in MACHINES:
        est = extrapolate(m, run, machine)
        cpu_frame = m.flow_b_s * (1 - m.flow_estimate_share)
        how = {
            "split": f"{m.split_cpu_s:.1f} s (measured, full size)",
            "frame_index": f"{m.index_cpu_s:.1f} s (measured, full size; 2 jobs side by side)",
            "flow (GMA on GPU)": f"ceil({shards}/{est['flow (GMA on GPU)']['slots']}) × ({m.flow_a_s:.2f} + "
                                 f"{per_shard:.0f} × max(1/{run.gma_fps:g}, {cpu_frame:.3f}/{machine.flow_threads}))"
                                 " s",
            "affinity": f"ceil({shards}/{est['affinity']['slots']}) × ({m.affinity_a_s:.2f} + {per_shard:.0f} × "
                        f"{m.affinity_b_s:.4f}) / max(1, min({m.affinity_utilisation:.2f}, "
                        f"{machine.affinity_threads})) s",
            "train": f"{run.experiments} × {run.iters} × {run.batch} × {run.train_s_per_image:g} / {machine.gpus} s",
            "evaluate": f"ceil({run.experiments}/{machine.gpu_job_slots}) × {run.train_val_frames} × "
                        f"max({run.eval_gpu_s_per_frame:g}, {run.eval_cpu_s_per_frame:g}/{machine.evaluate_threads}) s",
        }
        rows = [[name, row["jobs"], f"{row['job_s']:.0f}", row["slots"], f"{row['hours']:.2f}", how[name]]
                for name, row in est.items() if name != "total"]
        rows.append(["**total**", "", "", "", f"**{est['total']['hours']:.1f}**", ""])
        out += [f"### {machine.name}", "", table(["stage", "jobs", "s per job", "at once", "hours", "arithmetic"],
                                                rows), ""]
    flow_fit = [fit_line(r["shard_frames"][0], r["stores"]["flow/shard_0"][i], r["shard_frames"][1],
                         r["stores"]["flow/shard_1"][i]) for i in (0, 1)]
    aff_fit = [fit_line(r["shard_frames"][0], r["stores"]["affinity/shard_0"][i], r["shard_frames"][1],
                        r["stores"]["affinity/shard_1"][i]) for i in (0, 1)]
    disk = []
    sample_shard = s["sample_videos"] // 2
    for name, ((ba, bb), (fa, fb)) in (("results/flow", flow_fit), ("results/affinity", aff_fit)):
        total_b, total_f = store_totals(ba, bb, fa, fb, run.frames, run.videos / sample_shard)
        disk.append([name, f"{ba * mib:.2f} MiB + {fa:.0f} files per {sample_shard} videos; "
                           f"{bb / 1024:.1f} KiB + {fb:.2f} files per frame",
                     f"{total_b / 1024 ** 3:.1f}", f"{total_f:,.0f}"])
    disk.append(["dataset JPEGs (procedural; real frames differ)", f"{s['jpeg_bytes_per_frame'] / 1024:.0f} KiB/frame",
                 f"{s['jpeg_bytes_per_frame'] * run.frames / 1024 ** 3:.1f}", f"{run.frames:,}"])
    for name in ("split", "index/train_train.h5", "index/train_val.h5"):
        size, count = r["files"][name]
        disk.append([f"results/{name}", "measured at full size", f"{size / 1024 ** 3:.2f}", count])
    final, _ = r["files"]["checkpoint"]
    ckpt, ckpt_files = r["files"]["checkpoints"]
    per_exp = final + KEEP_CHECKPOINTS * ckpt
    disk.append(["results/train (final.pt + the newest checkpoints kept)",
                 f"({final * mib:.0f} + {KEEP_CHECKPOINTS} × {ckpt * mib:.0f}) MiB × {run.experiments}",
                 f"{per_exp * run.experiments / 1024 ** 3:.1f}", (1 + KEEP_CHECKPOINTS * ckpt_files) * run.experiments])
    out += ["## Disk and inodes", "", table(["store", "per unit (measured)", "GiB", "files"], disk), "",
            "Flow and affinity: a + b × frames fitted through the two sample shards (equal video counts, so a counts per "
            f"{sample_shard} videos: metadata and per-video files scale with videos, not with shards). The stores "
            "hold procedural frames; real video compresses differently.",
            "", "## Peak memory per job (max RSS, Snakemake benchmark)", ""]
    peak = {}
    for key, v in b.items():
        rule = key.split(":")[1].split("/")[0]
        peak[rule] = max(peak.get(rule, 0.0), v["max_rss"])
    out += [table(["rule", "max RSS MiB (sample)", "at full size"],
                  [[k, f"{v:.0f}", "measured at full size" if k in ("split", "frame_index") else
                    (f"full train.json parse included; shard 0 / 1 ({r['shard_frames'][0]} / {r['shard_frames'][1]} "
                     f"frames): {b[f'A:{k}/shard_0']['max_rss']:.0f} / {b[f'A:{k}/shard_1']['max_rss']:.0f}"
                     if k in ("flow", "affinity") else "paper network on CPU; host memory of a GPU job differs")]
                   for k, v in peak.items()]), ""]
    dry = r["dry_run"]
    out += ["## Dry run of the full-size config", "",
            f"`snakemake -n --configfile config/ytvis2019.yaml <dataset.root = a folder holding the "
            f"YouTube-VIS-sized train.json and one empty folder per video>`: DAG built and listed in "
            f"{dry['wall_s']:.1f} s wall ({dry['cpu_s']:.1f} s CPU). The dry run reads no frame and never parses "
            "train.json; it needs one folder per video under JPEGImages/ (common.smk's num_videos() counts them "
            "to plan the shards), so the harness makes empty ones.", "",
            table(["rule", "jobs"], [[k, v] for k, v in dry["jobs"].items()]), ""]
    return "\n".join(out)


def comparison(before: dict, after: dict, run_of: Callable[[dict], FullRun]) -> str:
    """A markdown section: each job's CPU seconds and peak RSS before and after, and the extrapolated totals."""
    rows = [[name, f"{b['cpu_s']:.1f}", f"{after['benchmarks'][name]['cpu_s']:.1f}",
             f"{b['cpu_s'] / after['benchmarks'][name]['cpu_s']:.2f}×" if after['benchmarks'][name]['cpu_s'] else "",
             f"{b['max_rss']:.0f} → {after['benchmarks'][name]['max_rss']:.0f}"]
            for name, b in before["benchmarks"].items() if name in after["benchmarks"]]
    m_before, m_after = measured_from(before), measured_from(after)
    rows += [["flow CPU per frame (fit b)", f"{m_before.flow_b_s:.3f}", f"{m_after.flow_b_s:.3f}",
              f"{m_before.flow_b_s / m_after.flow_b_s:.2f}×", ""],
             ["affinity CPU per frame (fit b)", f"{m_before.affinity_b_s:.4f}", f"{m_after.affinity_b_s:.4f}",
              f"{m_before.affinity_b_s / m_after.affinity_b_s:.2f}×", ""]]
    for machine in MACHINES:
        hb = extrapolate(m_before, run_of(before), machine)["total"]["hours"]
        ha = extrapolate(m_after, run_of(after), machine)["total"]["hours"]
        rows.append([f"extrapolated total hours, {machine.name}", f"{hb:.1f}", f"{ha:.1f}", f"{hb / ha:.2f}×", ""])
    return "\n".join(["## Before and after (two rehearsals: different code, same data and machine)", "",
                      f"Before: {before.get('git', '?')} ({before.get('date', '?')}); after: this run.", "",
                      table(["job", "CPU s before", "CPU s after", "before / after", "max RSS MiB"], rows), ""])


def git_head() -> str:
    """The short commit of the repository (with '+changes' when the tree is dirty)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    return head.strip() + ("+changes" if dirty.strip() else "")


def main() -> int:
    """Rehearse (or reuse --from-json), extrapolate, write docs/scale.md and the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mowis-scale"), help="scratch folder (replaced)")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "scale.md")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--from-json", type=Path, help="skip the rehearsal: re-extrapolate these measurements")
    parser.add_argument("--videos", type=int, default=20, help="videos per sampled shard (two shards)")
    parser.add_argument("--frames-small", type=int, default=3, help="frames per video of shard 0")
    parser.add_argument("--frames-large", type=int, default=8, help="frames per video of shard 1")
    parser.add_argument("--iters", type=int, default=2, help="training iterations of run B")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep --work's datasets when made with these arguments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-json", type=Path, help="benchmarks/gpu_check_gma.py --json output")
    parser.add_argument("--before", type=Path, help="an earlier rehearsal's --json: add a before/after section")
    parser.add_argument("--train-s-per-image", type=float, default=TRAIN_S_PER_IMAGE_PLACEHOLDER)
    parser.add_argument("--eval-gpu-s-per-frame", type=float, default=EVAL_GPU_S_PER_FRAME_PLACEHOLDER)
    args = parser.parse_args()
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    r = json.loads(args.from_json.read_text()) if args.from_json else dict(rehearse(args), command=command)
    if args.json:
        write_json_atomic(args.json, r)
    gma_fps, gma_source = gpu_rates(args.gpu_json)

    def run_of(measurements: dict) -> FullRun:
        """The full run of these measurements' dataset and config, with this command's GPU rates."""
        p = measurements["paper"]
        return FullRun(videos=measurements["sizes"]["videos"], frames=measurements["sizes"]["frames"],
                       train_val_frames=measurements["train_val_frames"], shard_size=p["shard_size"],
                       experiments=p["experiments"], iters=p["iters"], batch=p["batch"], gma_fps=gma_fps,
                       train_s_per_image=args.train_s_per_image, eval_gpu_s_per_frame=args.eval_gpu_s_per_frame,
                       eval_cpu_s_per_frame=EVAL_CPU_S_PER_FRAME_ISSUE13)

    m, run = measured_from(r), run_of(r)
    text = report(r, m, run, gma_source, command)
    if args.before:
        text += "\n" + comparison(json.loads(args.before.read_text()), r, run_of)
    write_bytes_atomic(args.doc, (text + "\n").encode())
    print(json.dumps({mc.name: extrapolate(m, run, mc)["total"] for mc in MACHINES}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
