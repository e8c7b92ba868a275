"""The tables rule's module on fixed metrics files gives the expected markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.coco_eval import STAT_NAMES
from model.tables import build_tables


def _metrics(name: str, segm_ap: float, box_ap: float) -> dict:
    stats = lambda ap: {"AP": ap, "AP50": ap + 20, "AP75": ap - 1, "APs": 1.0, "APm": 2.0, "APl": ap + 2,  # noqa: E731
                        "per_class": {"cat": ap + 0.04, "dog": None}}
    return {"experiment": name, "dataset": "synthetic", "backbone": "resnet18", "segm": stats(segm_ap),
            "bbox": stats(box_ap)}


def _subsets(name: str, replicates: dict[str, list[float | None]], seed: int = 0) -> dict:
    """A subsets.json: per subset (mask and box alike) AP value 0.5 + the replicates' mean, interval = the
    replicates' 2.5/97.5 percentiles; every other stat None."""
    def stat(reps: list[float | None]) -> dict:
        kept = [r for r in reps if r is not None]
        return {"value": float(np.mean(kept)) + 0.5, "interval": list(np.percentile(kept, [2.5, 97.5])),
                "replicates": reps}
    none = {"value": None, "interval": None, "replicates": []}
    subsets = {s: {"objects": 10 + k, **{t: {m: stat(reps) if m == "AP" else none for m in STAT_NAMES}
                                         for t in ("segm", "bbox")}}
               for k, (s, reps) in enumerate(replicates.items())}
    return {"experiment": name, "dataset": "synthetic", "backbone": "resnet18", "subsets": subsets,
            "bootstrap": {"unit": "video", "resamples": 4, "seed": seed, "level": 0.95, "videos": [1, 2]}}


EXPERIMENTS = {"boxinst": {"paper": "boxinst_r50", "model": {}}, "ours": {"paper": "ours_r50", "model": {}},
               "scratch": {"paper": None, "model": {}}}


def test_table2_markdown_exactly() -> None:
    """Ours with its interval (the AP of subset all; AP50 and AP75 have none here), the backbone trained."""
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.34, 21.0)], EXPERIMENTS,
                         [_subsets("ours", {"all": [10.0, 11.0, 14.0, 12.0]})])
    assert files["table2.md"] == (
        "# Table 2: ablations, R-50 (mask AP)\n\n"
        "Each cell: ours [95 % bootstrap interval over train_val videos] (paper). Ours: synthetic, with the "
        "backbone named in each row; the paper: YouTube-VIS 2019 train_val (reconstructed split), image-level "
        "COCO AP, backbone as the row label says.\n\n"
        "| | experiment | backbone | mask AP | mask AP50 | mask AP75 |\n"
        "|---|---|---|---:|---:|---:|\n"
        "| Ours (full) | ours | R-18 | 12.3 [10.1, 13.8] (29.0) | 32.3 (50.2) | 11.3 (29.4) |\n"
        "| w/o motion for detection | – | – | – (27.9) | – (48.2) | – (29.0) |\n"
        "| w/o motion for segmentation | – | – | – (27.6) | – (48.8) | – (27.7) |\n"
        "| w/o flow in pairwise | – | – | – (27.3) | – (48.8) | – (27.3) |\n")


def test_table1_rows_and_csv_columns() -> None:
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)], EXPERIMENTS, [])
    line = [l for l in files["table1.md"].splitlines() if l.startswith("| BoxInst R-50")][0]
    assert line == ("| BoxInst R-50 | boxinst | R-18 | 10.0 (25.9) | 30.0 (46.8) | 9.0 (25.4) | 20.0 (37.0) | "
                    "40.0 (54.2) | 19.0 (38.7) |")
    header, first = files["table1.csv"].splitlines()[:2]
    assert header.split(",")[:7] == ["row", "experiment", "backbone", "paper segm AP", "ours segm AP",
                                     "ours segm AP low", "ours segm AP high"]
    assert first.split(",")[:7] == ["BoxInst R-50", "boxinst", "R-18", "25.9", "10.0", "", ""]


def test_table3_is_the_papers_detection_table() -> None:
    """Table 3: box AP, AP50, AP75 of BoxInst and Ours at R-50 and R-101, the paper's numbers beside ours."""
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)], EXPERIMENTS, [])
    lines = files["table3.md"].splitlines()
    assert lines[0] == "# Table 3: object detection (box AP)"
    assert "| | experiment | backbone | box AP | box AP50 | box AP75 |" in lines
    rows = [l for l in lines if l.startswith(("| BoxInst", "| Ours"))]
    assert rows == ["| BoxInst R-50 | boxinst | R-18 | 20.0 (37.0) | 40.0 (54.2) | 19.0 (38.7) |",
                    "| Ours R-50 | ours | R-18 | 21.0 (38.4) | 41.0 (55.6) | 20.0 (40.8) |",
                    "| BoxInst R-101 | – | – | – (39.9) | – (56.5) | – (42.3) |",
                    "| Ours R-101 | – | – | – (39.7) | – (57.2) | – (41.6) |"]


def test_subset_table_with_paired_differences() -> None:
    """Ours - BoxInst per subset: the point difference and the percentiles of the replicate-wise differences
    (a None replicate left out), bold when the interval excludes 0; draws that differ are an error."""
    base = _subsets("boxinst", {"all": [1.0, 2.0, 3.0, 4.0], "camouflaged": [1.0, 1.0, None, 1.0]})
    ours = _subsets("ours", {"all": [2.0, 1.5, 4.0, 4.5], "camouflaged": [3.0, 4.0, 2.0, 5.0]})
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)], EXPERIMENTS, [base, ours])
    rows = {l.split(" | ")[0]: l for l in files["subsets.md"].splitlines() if l.startswith("| all") or
            l.startswith("| camouflaged")}
    diff_all = np.array([1.0, -0.5, 1.0, 0.5])
    low, high = np.percentile(diff_all, [2.5, 97.5])
    assert f"| {0.5 + diff_all.mean() - 0.5:+.1f} [{low:+.1f}, {high:+.1f}] |" in rows["| all"]
    assert "**" not in rows["| all"]  # the interval straddles 0
    low, high = np.percentile([2.0, 3.0, 4.0], [2.5, 97.5])  # the None replicate left out
    assert f"**{3.5 + 0.5 - 1.5:+.1f} [{low:+.1f}, {high:+.1f}]**" in rows["| camouflaged"]
    assert "## boxinst vs ours (the paper's R-50 rows; trained R-18)" in files["subsets.md"]
    header = files["subsets.csv"].splitlines()[0].split(",")
    assert header[:6] == ["paper rows", "boxinst", "ours", "backbone", "subset", "objects"]
    assert "ours - boxinst segm AP low" in header
    with pytest.raises(ValueError, match="bootstrap draws differ"):
        build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)], EXPERIMENTS,
                     [base, _subsets("ours", {"all": [1.0] * 4}, seed=1)])


def test_per_class_table_and_cli(tmp_path: Path) -> None:
    paths = []
    for m in (_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)):
        p = tmp_path / f"{m['experiment']}.json"
        p.write_text(json.dumps(m))
        paths.append(str(p))
    out = tmp_path / "tables"
    subprocess.run([sys.executable, "-m", "model.tables", "--experiments", json.dumps(EXPERIMENTS),
                    "--metrics", *paths, "--out-dir", str(out)], check=True, capture_output=True)
    names = [f"table{i}" for i in range(1, 5)] + ["per_class", "subsets"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in names for e in ("md", "csv"))
    per_class = (out / "per_class.md").read_text().splitlines()
    assert "| cat | 10.0 | 12.0 |" in per_class and "| dog | – | – |" in per_class


def test_undefined_ap_is_a_dash_not_a_number() -> None:
    """APs null in metrics.json (no small objects in the split): '–' in the markdown, empty in the CSV."""
    ours = _metrics("ours", 12.0, 21.0)
    ours["bbox"]["APs"] = None
    files = build_tables([_metrics("boxinst", 10.0, 20.0), ours], EXPERIMENTS, [])
    line = [l for l in files["table4.md"].splitlines() if l.startswith("| detection fusion: sum")][0]
    assert line.split(" | ")[2:7] == ["R-18", "21.0 (38.4)", "41.0 (55.6)", "20.0 (40.8)", "– (9.2)"]
    header, first = files["table4.csv"].splitlines()[:2]
    assert dict(zip(header.split(","), first.split(",")))["ours bbox APs"] == ""
