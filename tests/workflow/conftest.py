"""Workflow runs that several tests assert on, each made once per session (CI time: a tiny run costs minutes on
two cores). A test that edits and reruns works on its own copy (smk.copy_run), never on the shared folder."""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.boxes_csv import main as convert
from smk import ONE_STREAM_BOXINST, snakemake, write_tiny
from tiny_ytvis import write_tiny_ytvis


@dataclass(frozen=True)
class Run:
    """A finished workflow run: its working directory, the completed snakemake process and its dataset root."""

    work: Path
    process: subprocess.CompletedProcess
    root: Path | None = None
    box_rows: int = 0


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """TINY (synthetic data, both experiments) run to all its targets on 2 cores, config in work/tiny.yaml."""
    work = tmp_path_factory.mktemp("tiny_run")
    return Run(work, snakemake(work, "--cores", "2", "--configfile", str(write_tiny(work / "tiny.yaml"))))


@pytest.fixture(scope="session")
def default_plan(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """`snakemake -n -p` on the default config in an empty folder: the plan with each job's command line."""
    return snakemake(tmp_path_factory.mktemp("default_plan"), "-n", "-p")


def write_box_csv(root: Path, out: Path) -> int:
    """The dataset's boxes as video,frame,track,class,x,y,w,h rows (its masks dropped); the row count."""
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


@pytest.fixture(scope="session")
def boxes_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Your own videos with boxes only, under a path with a space and a quote: a tiny YouTube-VIS folder at
    "my data's/mine" whose train.json pipeline.boxes_csv rewrote from a per-frame box CSV, TINY with one flow
    shard, run to the tables with two experiments chosen on the command line: BoxInst made one-stream there, and
    ours (two-stream)."""
    base = tmp_path_factory.mktemp("boxes_run")
    root = base / "my data's/mine"
    write_tiny_ytvis(root, videos=6, frames=4, height=48, width=64)
    rows = write_box_csv(root, base / "boxes.csv")
    (root / "train.json").unlink()
    convert(["--root", str(root), "--csv", str(base / "boxes.csv")])
    config = write_tiny(base / "mine.yaml", dataset={"root": str(root)},
                        flow={"shard_size": 6})  # one flow and one affinity job
    work = base / "work"
    work.mkdir()
    run = snakemake(work, "results/tables", "--cores", "2", "--configfile", str(config), "--config",
                    f"experiments={ONE_STREAM_BOXINST}", 'run=["boxinst", "ours"]')
    return Run(work, run, root, rows)
