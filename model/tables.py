"""The paper's tables (method §6) with our numbers beside theirs, and the subset comparison.

results/tables/: table1-4.{md,csv} (Table 3 is the paper's object detection table, box AP), per_class.{md,csv}
(per-class mask AP of our runs, no paper column) and subsets.{md,csv} (BoxInst vs Ours mask and box AP on all,
camouflaged, distinct, static, slow and fast objects, with the paired difference). Every AP of ours carries
its bootstrap interval over train_val videos (model.subsets, `[low, high]`); a difference whose interval
excludes 0 is in bold. Each row names the backbone its experiment trained.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.bootstrap import interval, paired_difference
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
# BoxInst vs Ours pairs of the subset comparison: (the paper's backbone, BoxInst row id, Ours row id)
PAIRS = (("R-50", "boxinst_r50", "ours_r50"), ("R-101", "boxinst_r101", "ours_r101"))


@dataclass(frozen=True)
class Table:
    """One table: its title, rows as (label, paper row id), and columns as (iou_type, metric)."""

    title: str
    rows: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]


_APS3 = ("AP", "AP50", "AP75")
_APS6 = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_MAIN_ROWS = tuple((ROW_LABELS[r], r) for r in ("boxinst_r50", "ours_r50", "boxinst_r101", "ours_r101"))
TABLES = {
    "table1": Table("Table 1: main results (mask and box AP)", _MAIN_ROWS,
                    tuple(("segm", m) for m in _APS3) + tuple(("bbox", m) for m in _APS3)),
    "table2": Table("Table 2: ablations, R-50 (mask AP)",
                    (("Ours (full)", "ours_r50"),) + tuple((ROW_LABELS[r], r) for r in
                                                          ("no_motion_det", "no_motion_mask", "no_flow_pairwise")),
                    tuple(("segm", m) for m in _APS3)),
    "table3": Table("Table 3: object detection (box AP)", _MAIN_ROWS, tuple(("bbox", m) for m in _APS3)),
    "table4": Table("Table 4: feature fusion, R-50",
                    (("detection fusion: sum", "ours_r50"), ("detection fusion: max", "det_max"),
                     ("mask fusion: concat", "ours_r50"), ("mask fusion: sum", "mask_sum"),
                     ("mask fusion: max", "mask_max")),
                    tuple(("bbox", m) for m in _APS6) + tuple(("segm", m) for m in _APS6)),
}


def ap_cell(value: float | None) -> str:
    """One AP cell: one decimal, or an en dash where there is no number."""
    return "–" if value is None else f"{value:.1f}"


def interval_text(low: float | None, high: float | None, sign: str = "") -> str:
    """' [low, high]' of a bootstrap interval (one decimal, `sign` '+' to show it), empty when there is none."""
    return "" if low is None or high is None else f" [{low:{sign}.1f}, {high:{sign}.1f}]"


def backbone_label(backbone: str | None) -> str | None:
    """The paper's name of a torchvision backbone: 'R-18' for resnet18; other names as they are."""
    if backbone is None:
        return None
    return f"R-{backbone.removeprefix('resnet')}" if backbone.startswith("resnet") else backbone


def metric_table(table: Table, runs: dict[str, dict[str, Any]],
                 subsets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `table`: for each paper row, the experiment that reproduces it (if any), its backbone, both
    numbers, and ours' bootstrap interval (subset `all` of the experiment's subsets.json, when there is one)."""
    out = []
    for label, row_id in table.rows:
        run = runs.get(row_id)
        boot = subsets.get(run["experiment"]) if run else None
        row: dict[str, Any] = {"row": label, "experiment": run["experiment"] if run else None,
                               "backbone": backbone_label(run.get("backbone")) if run else None}
        for iou_type, metric in table.columns:
            row[f"paper {iou_type} {metric}"] = PAPER.get(row_id, {}).get(iou_type, {}).get(metric)
            row[f"ours {iou_type} {metric}"] = run[iou_type][metric] if run else None
            bounds = boot["subsets"]["all"][iou_type][metric]["interval"] if boot else None
            row[f"ours {iou_type} {metric} low"], row[f"ours {iou_type} {metric} high"] = bounds or (None, None)
        out.append(row)
    return out


def to_markdown(title: str, rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], note: str) -> str:
    """Markdown with one 'ours [interval] (paper)' cell per metric."""
    heads = [f"{'mask' if t == 'segm' else 'box'} {m}" for t, m in columns]
    lines = [f"# {title}", "", note, "", "| | experiment | backbone | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---:|" * len(heads)]
    for row in rows:
        cells = [f"{ap_cell(row[f'ours {t} {m}'])}{interval_text(row[f'ours {t} {m} low'], row[f'ours {t} {m} high'])} "
                 f"({ap_cell(row[f'paper {t} {m}'])})" for t, m in columns]
        lines.append(f"| {row['row']} | {row['experiment'] or '–'} | {row['backbone'] or '–'} | "
                     + " | ".join(cells) + " |")
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
    """Per-class mask AP of every evaluated experiment (ours only), as markdown and CSV."""
    names = sorted(runs_by_name)
    classes = sorted({c for r in runs_by_name.values() for c in r["segm"]["per_class"]})
    rows = [{"class": c, **{n: runs_by_name[n]["segm"]["per_class"].get(c) for n in names}} for c in classes]
    md = ["# Per-class mask AP of our runs", "",
          "The paper's per-class numbers are not part of the method specification, so this table has no paper "
          "column.", "", "| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    md += [f"| {r['class']} | " + " | ".join(ap_cell(r[n]) for n in names) + " |" for r in rows]
    return "\n".join(md) + "\n", to_csv(rows) if rows else "class\n"


def _same_draws(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Raise unless two subsets.json files resampled the same videos the same way (a paired bootstrap)."""
    keys = ("resamples", "seed", "videos", "level")
    if any(a["bootstrap"][k] != b["bootstrap"][k] for k in keys):
        raise ValueError(f"subsets.json of {a['experiment']} and {b['experiment']}: bootstrap draws differ "
                         f"({', '.join(keys)} must match); rerun rule subset_ap for both")


def subset_rows(runs: dict[str, dict[str, Any]], subsets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per BoxInst/Ours pair with both runs and per subset: objects, both APs and Ours - BoxInst (mask and box),
    each with its interval; the difference's interval from the same draws (paired)."""
    rows = []
    for paper_backbone, base_row, ours_row in PAIRS:
        names = [runs[r]["experiment"] for r in (base_row, ours_row) if r in runs]
        if len(names) < 2 or any(n not in subsets for n in names):
            continue
        base, ours = (subsets[n] for n in names)
        _same_draws(base, ours)
        level = base["bootstrap"]["level"]
        for name, b in base["subsets"].items():
            o = ours["subsets"][name]
            row: dict[str, Any] = {"paper rows": paper_backbone, "boxinst": base["experiment"],
                                   "ours": ours["experiment"], "backbone": backbone_label(ours["backbone"]),
                                   "subset": name, "objects": b["objects"]}
            for iou_type in ("segm", "bbox"):
                bs, os_ = b[iou_type]["AP"], o[iou_type]["AP"]
                diff = None if bs["value"] is None or os_["value"] is None else os_["value"] - bs["value"]
                bounds = interval(paired_difference(os_["replicates"], bs["replicates"]), level)
                for who, value, span in (("boxinst", bs["value"], bs["interval"]),
                                         ("ours", os_["value"], os_["interval"]),
                                         ("ours - boxinst", diff, bounds)):
                    row[f"{who} {iou_type} AP"] = value
                    row[f"{who} {iou_type} AP low"], row[f"{who} {iou_type} AP high"] = span or (None, None)
            rows.append(row)
    return rows


def subsets_markdown(rows: list[dict[str, Any]], level: float | None) -> str:
    """The subset comparison as markdown: a section per BoxInst/Ours pair, a row per subset."""
    lines = ["# Subset AP: BoxInst vs Ours", "",
             "Mask and box AP on subsets of the train_val objects, the other objects ignored (COCOeval crowd "
             "flags): camouflaged or distinct (synthetic data), and by motion relative to the surrounding "
             "background (px/frame from the flow stores; bins in config evaluate.subsets). "
             f"Each cell: AP [{100 * (level or 0.95):g} % bootstrap interval over videos]. The difference is "
             "paired (both runs on the same resampled videos); in bold where its interval excludes 0."]
    if not rows:
        return "\n".join(lines + ["", "No BoxInst/Ours pair of experiments in this config."]) + "\n"
    heads = [f"{k} {w}" for k in ("mask AP", "box AP") for w in ("BoxInst", "Ours", "Ours − BoxInst")]
    for pair in dict.fromkeys((r["boxinst"], r["ours"], r["paper rows"], r["backbone"]) for r in rows):
        lines += ["", f"## {pair[0]} vs {pair[1]} (the paper's {pair[2]} rows; trained {pair[3]})", "",
                  "| subset | objects | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
        for r in rows:
            if (r["boxinst"], r["ours"]) != pair[:2]:
                continue
            cells = []
            for t in ("segm", "bbox"):
                for who in ("boxinst", "ours", "ours - boxinst"):
                    value, low, high = (r[f"{who} {t} AP{s}"] for s in ("", " low", " high"))
                    sign = "+" if who == "ours - boxinst" else ""
                    cell = ("–" if value is None else f"{value:{sign}.1f}") + interval_text(low, high, sign)
                    excludes_zero = sign and low is not None and (low > 0 or high < 0)
                    cells.append(f"**{cell}**" if excludes_zero else cell)
            lines.append(f"| {r['subset']} | {r['objects']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_tables(metrics: list[dict[str, Any]], experiments: dict[str, dict[str, Any]],
                 subsets: list[dict[str, Any]]) -> dict[str, str]:
    """File name → text for all tables, from evaluate's metrics.json and subset_ap's subsets.json contents
    and the experiments config."""
    runs: dict[str, dict[str, Any]] = {}
    by_name = {m["experiment"]: m for m in metrics}
    for name, exp in experiments.items():
        if exp.get("paper") and name in by_name:
            runs[exp["paper"]] = by_name[name]
    boot = {s["experiment"]: s for s in subsets}
    datasets = sorted({m.get("dataset", "?") for m in metrics})
    level = next(iter(boot.values()))["bootstrap"]["level"] if boot else None
    note = (f"Each cell: ours [{100 * (level or 0.95):g} % bootstrap interval over train_val videos] (paper). "
            f"Ours: {', '.join(datasets)}, with the backbone named in each row; the paper: YouTube-VIS 2019 "
            "train_val (reconstructed split), image-level COCO AP, backbone as the row label says.")
    files = {}
    for key, table in TABLES.items():
        rows = metric_table(table, runs, boot)
        files[f"{key}.md"] = to_markdown(table.title, rows, table.columns, note)
        files[f"{key}.csv"] = to_csv(rows)
    files["per_class.md"], files["per_class.csv"] = per_class_table(by_name)
    rows = subset_rows(runs, boot)
    files["subsets.md"] = subsets_markdown(rows, level)
    files["subsets.csv"] = to_csv(rows) if rows else "paper rows\n"
    return files


def main() -> None:
    """CLI: metrics.json and subsets.json files and the experiments section in, the tables out."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", required=True, help="the experiments config section as JSON")
    ap.add_argument("--metrics", nargs="+", required=True, help="results/eval/<exp>/metrics.json files")
    ap.add_argument("--subsets", nargs="*", default=[], help="results/eval/<exp>/subsets.json files")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    log = setup_logging()
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    subsets = [json.loads(Path(p).read_text()) for p in args.subsets]
    files = build_tables(metrics, json.loads(args.experiments), subsets)
    with atomic_dir(args.out_dir) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    log.info("wrote %s to %s", ", ".join(sorted(files)), args.out_dir)


if __name__ == "__main__":
    main()
