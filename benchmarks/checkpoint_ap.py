"""AP along a training run: saved training checkpoints evaluated like final.pt (a learning curve in AP).

    python benchmarks/checkpoint_ap.py --run RUN_DIR --exp ours CKPT [CKPT ...] [--json out.json]

RUN_DIR is a finished workflow folder (its final.pt, train_val index, flow stores and evaluation). Each CKPT is a
training checkpoint of that experiment (`results/train/<exp>/checkpoints/<key>/ckpt_*.pt`, or a copy: the trainer
keeps only the newest `train.keep_checkpoints`). For each, final.pt's record with the checkpoint's weights and
step goes to a temporary file, `model.evaluate` runs on it with the evaluate section the run's own evaluation
recorded (results/eval/<exp>/metrics.json), and one row is printed: step, mask and box AP, the same
class-agnostic (benchmarks/class_agnostic.py) and the class accuracy. Mid-run checkpoints of a cosine schedule
are taken at a learning rate above zero: they show how far training has come, not what a run of that length
would reach.
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipeline.io import write_json_atomic  # noqa: E402
from pipeline.torch_files import load_torch_file  # noqa: E402

score = runpy.run_path(str(Path(__file__).with_name("class_agnostic.py")))["score"]  # its AP without classes


def final_with(final: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """final.pt's record with the weights and step of training checkpoint `checkpoint`."""
    state = load_torch_file(checkpoint, "a training checkpoint (model.train)")
    return {**final, "model": state["model"], "step": state["step"]}


def evaluate(run: Path, exp: str, checkpoint: Path, frames: Path, settings: dict, work: Path,
             threads: int) -> tuple[dict, list]:
    """model.evaluate of `checkpoint` with evaluate section `settings` on the run's train_val frames;
    (metrics.json, coco_results.json)."""
    metrics, results = work / "metrics.json", work / "coco_results.json"
    command = [sys.executable, "-m", "model.evaluate", "--checkpoint", str(checkpoint),
               "--index", str(run / "results/index/train_val.h5"),
               "--gt", str(run / "results/split/train_val_coco.json"),
               "--frames", str(frames), "--flow", str(run / "results/flow"),
               "--params", json.dumps(settings), "--experiment", exp, "--dataset", "checkpoint",
               "--out", str(metrics), "--results", str(results), "--threads", str(threads)]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
    return json.loads(metrics.read_text()), json.loads(results.read_text())


def main() -> None:
    """CLI: evaluate each checkpoint, print a row each, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished workflow folder")
    parser.add_argument("--exp", required=True, help="the experiment the checkpoints belong to")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--frames", type=Path, default=None,
                        help="the dataset's JPEGImages/ (default: the run's synthetic data)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    frames = args.frames or args.run / "results/synthetic/JPEGImages"
    final = load_torch_file(args.run / f"results/train/{args.exp}/final.pt", "final.pt (model.train)")
    gt = json.loads((args.run / "results/split/train_val_coco.json").read_text())
    settings = json.loads((args.run / f"results/eval/{args.exp}/metrics.json").read_text())["evaluate_params"]
    rows = []
    print("| step | mask AP | box AP | mask AP, no class | box AP, no class | class accuracy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for checkpoint in [*args.checkpoints, args.run / f"results/train/{args.exp}/final.pt"]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "final.pt"
            state = final if checkpoint.name == "final.pt" else final_with(final, checkpoint)
            torch.save(state, path)
            metrics, results = evaluate(args.run, args.exp, path, frames, settings, Path(tmp), args.threads)
        diagnosis = score(gt, results, settings["nms_thresh"])
        row = {"step": state["step"], "segm": metrics["segm"]["AP"], "bbox": metrics["bbox"]["AP"],
               "segm_agnostic": diagnosis["segm_agnostic"]["AP"], "bbox_agnostic": diagnosis["bbox_agnostic"]["AP"],
               "class_accuracy": 100 * diagnosis["confusion"]["accuracy"]}
        rows.append(row)
        print(f"| {row['step']} | {row['segm']:.1f} | {row['bbox']:.1f} | {row['segm_agnostic']:.1f} | "
              f"{row['bbox_agnostic']:.1f} | {row['class_accuracy']:.1f} % |", flush=True)
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
