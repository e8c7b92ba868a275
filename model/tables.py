"""The paper's tables (method §6) with our numbers beside theirs: results/tables/table{1..4}.{md,csv}."""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io import atomic_dir, setup_logging

# Paper numbers, YouTube-VIS 2019 train_val (method §6). Keys are the `paper` row ids experiments use.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "boxinst_r50": {"segm": {"AP": 25.9, "AP50": 46.8, "AP75": 25.4},
                    "bbox": {"AP": 37.0, "AP50": 54.2, "AP75": 38.7}},
    "ours_r50": {"segm": {"AP": 29.0, "AP50": 50.2, "AP75": 29.4, "APs": 3.8, "APm": 11.8, "APl": 31.6},
                 "bbox": {"AP": 38.4, "AP50": 55.6, "AP75": 40.8, "APs": 9.2, "APm": 18.2, "APl": 40.3}},
    "boxinst_r101": {"segm": {"AP": 29.1, "AP50": 51.2, "AP75": 29.4},
                     "bbox": {"AP": 39.9, "AP50": 56.5, "AP75": 42.3}},
    "ours_r101": {"segm": {"AP": 30.1, "AP50": 52.0, "AP75": 30.6},
                  "bbox": {"AP": 39.7, "AP50": 57.2, "AP75": 41.6}},
    "no_motion_det": {"segm": {"AP": 27.9, "AP50": 48.2, "AP75": 29.0}},
    "no_motion_mask": {"segm": {"AP": 27.6, "AP50": 48.8, "AP75": 27.7}},
    "no_flow_pairwise": {"segm": {"AP": 27.3, "AP50": 48.8, "AP75": 27.3}},
    "det_max": {"bbox": {"AP": 37.7, "AP50": 54.6, "AP75": 40.4, "APs": 8.5, "APm": 17.5, "APl": 40.7}},
    "mask_max": {"segm": {"AP": 28.6, "AP50": 49.3, "AP75": 29.6, "APs": 5.1, "APm": 9.7, "APl": 31.0}},
    "mask_sum": {"segm": {"AP": 28.3, "AP50": 49.0, "AP75": 29.2, "APs": 3.2, "APm": 10.0, "APl": 31.1}},
}
ROW_LABELS = {
    "boxinst_r50": "BoxInst R-50", "ours_r50": "Ours R-50", "boxinst_r101": "BoxInst R-101",
    "ours_r101": "Ours R-101", "no_motion_det": "w/o motion for detection",
    "no_motion_mask": "w/o motion for segmentation", "no_flow_pairwise": "w/o flow in pairwise",
    "det_max": "detection fusion: max", "mask_max": "mask fusion: max", "mask_sum": "mask fusion: sum",
}


@dataclass(frozen=True)
class Table:
    """One table: its title, rows as (label, paper row id), and columns as (iou_type, metric)."""

    title: str
    rows: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]


_APS3 = ("AP", "AP50", "AP75")
_APS6 = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TABLES = {
    "table1": Table("Table 1: main results (mask and box AP)",
                    tuple((ROW_LABELS[r], r) for r in ("boxinst_r50", "ours_r50", "boxinst_r101", "ours_r101")),
                    tuple(("segm", m) for m in _APS3) + tuple(("bbox", m) for m in _APS3)),
    "table2": Table("Table 2: ablations, R-50 (mask AP)",
                    (("Ours (full)", "ours_r50"),) + tuple((ROW_LABELS[r], r) for r in
                                                          ("no_motion_det", "no_motion_mask", "no_flow_pairwise")),
                    tuple(("segm", m) for m in _APS3)),
    "table4": Table("Table 4: feature fusion, R-50",
                    (("detection fusion: sum", "ours_r50"), ("detection fusion: max", "det_max"),
                     ("mask fusion: concat", "ours_r50"), ("mask fusion: sum", "mask_sum"),
                     ("mask fusion: max", "mask_max")),
                    tuple(("bbox", m) for m in _APS6) + tuple(("segm", m) for m in _APS6)),
}


def _fmt(value: float | None) -> str:
    """One AP cell: one decimal, or an en dash where there is no number."""
    return "–" if value is None else f"{value:.1f}"


def metric_table(table: Table, runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `table`: for each paper row, the experiment that reproduces it (if any) and both numbers."""
    out = []
    for label, row_id in table.rows:
        run = runs.get(row_id)
        row: dict[str, Any] = {"row": label, "experiment": run["experiment"] if run else None}
        for iou_type, metric in table.columns:
            row[f"paper {iou_type} {metric}"] = PAPER.get(row_id, {}).get(iou_type, {}).get(metric)
            row[f"ours {iou_type} {metric}"] = run[iou_type][metric] if run else None
        out.append(row)
    return out


def to_markdown(title: str, rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], note: str) -> str:
    """Markdown with one 'ours (paper)' cell per metric."""
    heads = [f"{'mask' if t == 'segm' else 'box'} {m}" for t, m in columns]
    lines = [f"# {title}", "", note, "", "| | experiment | " + " | ".join(heads) + " |",
             "|---|---|" + "---:|" * len(heads)]
    for row in rows:
        cells = [f"{_fmt(row[f'ours {t} {m}'])} ({_fmt(row[f'paper {t} {m}'])})" for t, m in columns]
        lines.append(f"| {row['row']} | {row['experiment'] or '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with separate columns for ours and the paper."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def per_class_table(runs_by_name: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Table 3 (ours only): per-class mask AP of every evaluated experiment, as markdown and CSV."""
    names = sorted(runs_by_name)
    classes = sorted({c for r in runs_by_name.values() for c in r["segm"]["per_class"]})
    rows = [{"class": c, **{n: runs_by_name[n]["segm"]["per_class"].get(c) for n in names}} for c in classes]
    md = ["# Table 3: per-class mask AP of our runs", "",
          "The paper's per-class numbers are not part of the method specification, so this table has no paper "
          "column.", "", "| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    md += [f"| {r['class']} | " + " | ".join(_fmt(r[n]) for n in names) + " |" for r in rows]
    return "\n".join(md) + "\n", to_csv(rows) if rows else "class\n"


def build_tables(metrics: list[dict[str, Any]], experiments: dict[str, dict[str, Any]]) -> dict[str, str]:
    """File name → text for all tables, from evaluate's metrics.json contents and the experiments config."""
    runs: dict[str, dict[str, Any]] = {}
    by_name = {m["experiment"]: m for m in metrics}
    for name, exp in experiments.items():
        if exp.get("paper") and name in by_name:
            runs[exp["paper"]] = by_name[name]
    datasets = sorted({m.get("dataset", "?") for m in metrics})
    note = (f"Each cell: ours (paper). Ours: {', '.join(datasets)}, backbone as configured per experiment; "
            "the paper: YouTube-VIS 2019 train_val (reconstructed split), image-level COCO AP.")
    files = {}
    for key, table in TABLES.items():
        rows = metric_table(table, runs)
        files[f"{key}.md"] = to_markdown(table.title, rows, table.columns, note)
        files[f"{key}.csv"] = to_csv(rows)
    files["table3.md"], files["table3.csv"] = per_class_table(by_name)
    return files


def main() -> None:
    """CLI: metrics.json files and the experiments section in, the four tables out."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", required=True, help="the experiments config section as JSON")
    ap.add_argument("--metrics", nargs="+", required=True, help="results/eval/<exp>/metrics.json files")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    log = setup_logging()
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    files = build_tables(metrics, json.loads(args.experiments))
    with atomic_dir(args.out_dir) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    log.info("wrote %s to %s", ", ".join(sorted(files)), args.out_dir)


if __name__ == "__main__":
    main()
