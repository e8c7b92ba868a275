"""The tables rule's module on fixed metrics files gives the expected markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from model.tables import build_tables


def _metrics(name: str, segm_ap: float, box_ap: float) -> dict:
    stats = lambda ap: {"AP": ap, "AP50": ap + 20, "AP75": ap - 1, "APs": 1.0, "APm": 2.0, "APl": ap + 2,  # noqa: E731
                        "per_class": {"cat": ap + 0.04, "dog": None}}
    return {"experiment": name, "dataset": "synthetic", "segm": stats(segm_ap), "bbox": stats(box_ap)}


EXPERIMENTS = {"boxinst": {"paper": "boxinst_r50", "model": {}}, "ours": {"paper": "ours_r50", "model": {}},
               "scratch": {"paper": None, "model": {}}}


def test_table2_markdown_exactly() -> None:
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.34, 21.0)], EXPERIMENTS)
    assert files["table2.md"] == (
        "# Table 2: ablations, R-50 (mask AP)\n\n"
        "Each cell: ours (paper). Ours: synthetic, backbone as configured per experiment; the paper: YouTube-VIS "
        "2019 train_val (reconstructed split), image-level COCO AP.\n\n"
        "| | experiment | mask AP | mask AP50 | mask AP75 |\n"
        "|---|---|---:|---:|---:|\n"
        "| Ours (full) | ours | 12.3 (29.0) | 32.3 (50.2) | 11.3 (29.4) |\n"
        "| w/o motion for detection | – | – (27.9) | – (48.2) | – (29.0) |\n"
        "| w/o motion for segmentation | – | – (27.6) | – (48.8) | – (27.7) |\n"
        "| w/o flow in pairwise | – | – (27.3) | – (48.8) | – (27.3) |\n")


def test_table1_rows_and_csv_columns() -> None:
    files = build_tables([_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)], EXPERIMENTS)
    line = [l for l in files["table1.md"].splitlines() if l.startswith("| BoxInst R-50")][0]
    assert line == "| BoxInst R-50 | boxinst | 10.0 (25.9) | 30.0 (46.8) | 9.0 (25.4) | 20.0 (37.0) | 40.0 (54.2) | 19.0 (38.7) |"
    header, first = files["table1.csv"].splitlines()[:2]
    assert header.split(",")[:4] == ["row", "experiment", "paper segm AP", "ours segm AP"]
    assert first.split(",")[:4] == ["BoxInst R-50", "boxinst", "25.9", "10.0"]


def test_table3_per_class_and_cli(tmp_path: Path) -> None:
    paths = []
    for m in (_metrics("boxinst", 10.0, 20.0), _metrics("ours", 12.0, 21.0)):
        p = tmp_path / f"{m['experiment']}.json"
        p.write_text(json.dumps(m))
        paths.append(str(p))
    out = tmp_path / "tables"
    subprocess.run([sys.executable, "-m", "model.tables", "--experiments", json.dumps(EXPERIMENTS),
                    "--metrics", *paths, "--out-dir", str(out)], check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"table{i}.{e}" for i in range(1, 5) for e in ("md", "csv"))
    table3 = (out / "table3.md").read_text().splitlines()
    assert "| cat | 10.0 | 12.0 |" in table3 and "| dog | – | – |" in table3


def test_undefined_ap_is_a_dash_not_a_number() -> None:
    """APs null in metrics.json (no small objects in the split): '–' in the markdown, empty in the CSV."""
    ours = _metrics("ours", 12.0, 21.0)
    ours["bbox"]["APs"] = None
    files = build_tables([_metrics("boxinst", 10.0, 20.0), ours], EXPERIMENTS)
    line = [l for l in files["table4.md"].splitlines() if l.startswith("| detection fusion: sum")][0]
    assert line.split(" | ")[2:6] == ["21.0 (38.4)", "41.0 (55.6)", "20.0 (40.8)", "– (9.2)"]
    header, first = files["table4.csv"].splitlines()[:2]
    assert dict(zip(header.split(","), first.split(",")))["ours bbox APs"] == ""
