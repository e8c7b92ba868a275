"""Your own videos with boxes only, end to end: a per-frame box CSV converted by pipeline.boxes_csv trains
the two-stream model through the workflow, and evaluation reports box AP and says why there is no mask AP."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.boxes_csv import main as convert
from smk import TINY, ran_rules, snakemake


def write_box_csv(root: Path, out: Path) -> int:
    """The tiny dataset's boxes as video,frame,track,class,x,y,w,h rows (its masks dropped); the row count."""
    data = json.loads((root / "train.json").read_text())
    videos = {v["id"]: v for v in data["videos"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    rows = []
    for ann in data["annotations"]:
        for t, box in enumerate(ann["bboxes"]):
            if box is not None:
                folder, frame = videos[ann["video_id"]]["file_names"][t].split("/")
                rows.append([folder, frame, ann["id"], names[ann["category_id"]], *box])
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "frame", "track", "class", "x", "y", "w", "h"])
        writer.writerows(rows)
    return len(rows)


@pytest.mark.slow
def test_boxes_only_videos_train_and_report_box_ap(tmp_path: Path, make_ytvis: Callable[..., Path]) -> None:
    """CSV -> train.json without masks -> split, flow, affinity, train, evaluate, subset AP, tables: box AP is a
    number, mask AP null with the reason, the tables show '–' for it."""
    root = make_ytvis("mine", videos=6, frames=4, height=48, width=64)
    boxes = write_box_csv(root, tmp_path / "boxes.csv")
    (root / "train.json").unlink()
    convert(["--root", str(root), "--csv", str(tmp_path / "boxes.csv")])
    data = json.loads((root / "train.json").read_text())
    assert all("segmentations" not in a for a in data["annotations"]) and boxes > 0
    config = yaml.safe_load(TINY)
    config["dataset"]["root"] = str(root)
    config["flow"]["shard_size"] = 6
    config["run"] = ["ours"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    run = snakemake(work, "results/tables", "--cores", "2", "--configfile", str(tmp_path / "mine.yaml"))
    assert {"split", "flow", "affinity", "train", "evaluate", "subset_ap", "tables"} <= ran_rules(run)
    gt = json.loads((work / "results/split/train_val_coco.json").read_text())
    assert gt["annotations"] and all("segmentation" not in a for a in gt["annotations"])
    metrics = json.loads((work / "results/eval/ours/metrics.json").read_text())
    assert metrics["segm"]["AP"] is None and "boxes only" in metrics["segm"]["note"]
    assert isinstance(metrics["bbox"]["AP"], float)
    assert "boxes only" in (work / "logs/evaluate/ours.log").read_text()
    state = torch.load(work / "results/train/ours/final.pt", map_location="cpu", weights_only=True)
    assert state["num_classes"] == len(data["categories"]) == 3  # taken from the data
    table1 = (work / "results/tables/table1.md").read_text()
    row = next(line for line in table1.splitlines() if "ours" in line.lower() and "|" in line and "–" in line)
    assert row
