"""Your own videos with boxes only, end to end (the shared `boxes_run` of conftest.py): a per-frame box CSV
converted by pipeline.boxes_csv trains the two-stream model through the workflow, and evaluation reports box AP
and says why there is no mask AP."""

from __future__ import annotations

import json

import pytest
import torch

from smk import ran_rules


@pytest.mark.slow
def test_boxes_only_videos_train_and_report_box_ap(boxes_run) -> None:
    """CSV -> train.json without masks -> split, flow, affinity, train, evaluate, subset AP, tables: box AP is a
    number, mask AP null with the reason, the tables show '–' for it."""
    data = json.loads((boxes_run.root / "train.json").read_text())
    assert all("segmentations" not in a for a in data["annotations"]) and boxes_run.box_rows > 0
    assert sum(box is not None for a in data["annotations"] for box in a["bboxes"]) == boxes_run.box_rows
    assert {"split", "flow", "affinity", "train", "evaluate", "subset_ap", "tables"} <= ran_rules(boxes_run.process)
    work = boxes_run.work
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
