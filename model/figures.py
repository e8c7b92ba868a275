"""The report's figures: training curves, flow quality, the paper's Fig. 1 and Fig. 3, and the tables as HTML.

Pure plotting functions (arrays and records in, one image file out, matplotlib Agg) and one CLI with a
subcommand per figure (the `figure_*` rules of workflow/rules/report.smk):

    python -m model.figures curves --final results/train/<exp>/final.pt ... --experiments JSON --out PNG
    python -m model.figures flow-quality --quality results/flow/quality.json --out PNG
    python -m model.figures flow-axis --runs runs/flow_dis runs/flow_gt ... [--experiment ours] \
        [--baseline boxinst] --out PNG [--table MD]      (config/flow_axis.yaml: one run per flow.estimator)
    python -m model.figures masks --gt train_val_coco.json --index train_val.h5 --frames <root>/JPEGImages \
        --results results/eval/<exp>/coco_results.json ... --experiments JSON --out PNG
    python -m model.figures activations --checkpoint results/train/<exp>/final.pt --index train_val.h5 \
        --frames <root>/JPEGImages --flow results/flow --params '<evaluate JSON>' --out PNG
    python -m model.figures tables --tables results/tables --out HTML
    python -m model.figures subsets --subsets results/eval/<exp>/subsets.json ... --out PNG

Fig. 1 (masks): ground truth beside each experiment's evaluated detections on a few train_val frames, the
middle annotated frame of evenly spaced videos (never chosen by how well a model does on them).
Fig. 3 (activations): the channel-mean |activation| of the image-stream and flow-stream FPN P3 of a
two-stream model on the same frames. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pycocotools.mask as mask_utils  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from model.coco_eval import annotation_mask  # noqa: E402
from model.evaluate import EvalFrames, EvaluateParams, load_trained, pad_batch  # noqa: E402
from model.network import TwoStreamCondInst  # noqa: E402
from model.predict import blend_masks  # noqa: E402
from model.tables import ROW_LABELS, ap_cell, interval_text, backbone_label  # noqa: E402
from model.train import record_has_values  # noqa: E402
from pipeline.flow import file_sha256  # noqa: E402
from pipeline.io import write_bytes_atomic  # noqa: E402
from pipeline.io import params_from_json, setup_logging  # noqa: E402
from pipeline.ytvis import read_frame  # noqa: E402

LOSS_TERMS = ("loss", "loss_cls", "loss_box", "loss_ctr", "loss_proj", "loss_pairwise")
DPI = 110


# --- files ------------------------------------------------------------------------------------------------

def save_figure(fig: Figure, out: Path) -> None:
    """Write `fig` to `out` (format from the suffix: .png or .svg) atomically, then close it."""
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"{out}: figures are written as .png or .svg, got .{fmt}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged training records of a metrics.jsonl (records of skipped non-finite steps only left out), by step."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (metrics.jsonl is written by model.train)")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: not a JSON record ({err})") from err
        if "step" not in record:
            raise KeyError(f"{path}:{line_no}: record without 'step'")
        if record_has_values(record):
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def experiment_label(name: str, experiments: dict[str, Any], backbone: str) -> str:
    """'BoxInst, R-18 (boxinst)': the method of the paper row the experiment reproduces with the backbone it
    trained (not the paper's), then its config name."""
    paper = experiments.get(name, {}).get("paper")
    method = ROW_LABELS[paper].removesuffix(" R-50").removesuffix(" R-101") if paper in ROW_LABELS else name
    return f"{method}, {backbone_label(backbone)} ({name})"


def trained_backbone(final: Path) -> str:
    """The backbone a final.pt was trained with (its model_params)."""
    state = torch.load(final, map_location="cpu", weights_only=True)
    if "model_params" not in state:
        raise KeyError(f"{final}: not a mowis final checkpoint (no 'model_params'); rerun rule train")
    return state["model_params"]["backbone"]


# --- training curves and flow quality ---------------------------------------------------------------------

def plot_training_curves(curves: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """One panel per loss term and one for the learning rate, a line per experiment: label -> records."""
    if not curves:
        raise ValueError("plot_training_curves: no experiments to plot")
    panels = [*LOSS_TERMS, "lr"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), squeeze=False)
    for ax, term in zip(axes.flat, panels):
        for label, records in curves.items():
            points = [(r["step"], r[term]) for r in records if term in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_title(term)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes.flat[len(panels) - 1].set_yscale("log")
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Training curves (metrics.jsonl)")
    fig.tight_layout()
    save_figure(fig, out)


def plot_flow_quality(quality: dict[str, Any], out: Path) -> None:
    """Per-video end-point error and share of pixels off by more than the outlier threshold, from the
    `flow_quality` rule's quality.json; the overall numbers in the title."""
    try:
        videos = sorted(quality["videos"].items(), key=lambda kv: int(kv[0]))
        overall, threshold = quality["overall"], quality["outlier_threshold_px"]
        epe = [v["epe"] for _, v in videos]
        outliers = [100.0 * v["outliers_3px"] for _, v in videos]
        estimator = quality["estimator"]
    except KeyError as err:
        raise KeyError(f"flow quality.json: missing field {err}; rerun rule flow_quality") from err
    ids = [k for k, _ in videos]
    fig, (ax_epe, ax_out) = plt.subplots(2, 1, figsize=(max(6.0, 0.14 * len(ids) + 2), 5), sharex=True)
    x = np.arange(len(ids))
    ax_epe.bar(x, epe, color="tab:blue")
    ax_epe.axhline(overall["epe"], color="k", linestyle="--", linewidth=1, label=f"overall {overall['epe']:.3f} px")
    ax_epe.set_ylabel("EPE (px)")
    ax_epe.legend(fontsize=8)
    ax_out.bar(x, outliers, color="tab:orange")
    ax_out.set_ylabel(f"% pixels > {threshold:g} px")
    ax_out.set_xlabel("video id")
    step = max(1, len(ids) // 24)
    ax_out.set_xticks(x[::step], ids[::step], rotation=90, fontsize=7)
    fig.suptitle(f"Flow estimator {estimator} vs synthetic ground truth: EPE {overall['epe']:.3f} px, "
                 f"{100.0 * overall['outliers_3px']:.2f}% outliers")
    fig.tight_layout()
    save_figure(fig, out)


# --- the flow-quality axis (config/flow_axis.yaml) ----------------------------------------------------------

FLOW_AXIS_SUBSETS = ("all", "camouflaged", "distinct")  # the flow-axis table's columns (model.subsets' names)
APCell = tuple[float, float, float]  # mask AP, and its bootstrap interval's low and high end


@dataclass(frozen=True)
class FlowAxisPoint:
    """One workflow run of the flow-quality axis: its flow source, EPE on the synthetic ground truth, the mask
    AP of the flow-using experiment and (when the run has it) of the flow-free baseline, and each one's mask AP
    [interval] per subset of FLOW_AXIS_SUBSETS (results/eval/<exp>/subsets.json; empty without that file)."""

    run: str
    estimator: str
    epe: float
    outliers: float
    mask_ap: float
    baseline_ap: float | None
    subsets: dict[str, APCell]
    baseline_subsets: dict[str, APCell]


def _read_json(path: Path, rule: str) -> dict[str, Any]:
    """A results JSON file; a missing one names the rule that writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the workflow in {path.parents[2]} (rule {rule})")
    return json.loads(path.read_text())


def _subset_mask_ap(path: Path) -> dict[str, APCell]:
    """Mask AP (value, low, high) per subset of FLOW_AXIS_SUBSETS from a subsets.json (rule subset_ap); {} when
    the file is absent."""
    if not path.is_file():
        return {}
    subsets = json.loads(path.read_text())["subsets"]
    return {name: (subsets[name]["segm"]["AP"]["value"], *subsets[name]["segm"]["AP"]["interval"])
            for name in FLOW_AXIS_SUBSETS if name in subsets}


def collect_flow_axis(runs: list[Path], experiment: str, baseline: str | None) -> list[FlowAxisPoint]:
    """One point per run directory (a `snakemake --directory`): results/flow/quality.json and
    results/eval/<experiment>/metrics.json (subsets.json beside it when there is one). The baseline reads no
    flow, so a run may leave it out (`run: [ours]`); at least one run must have it. The runs must share their
    split (the same train_val COCO file) and each use another flow source; points come back sorted by EPE."""
    points, splits = [], {}
    for run in runs:
        quality = _read_json(run / "results/flow/quality.json", "flow_quality")
        metrics = _read_json(run / f"results/eval/{experiment}/metrics.json", "evaluate")
        base_file = run / f"results/eval/{baseline}/metrics.json"
        base = json.loads(base_file.read_text()) if baseline and base_file.is_file() else None
        split = run / "results/split/train_val_coco.json"
        splits[run] = file_sha256(split) if split.is_file() else None
        points.append(FlowAxisPoint(run.resolve().name, quality["estimator"], quality["overall"]["epe"],
                                    quality["overall"]["outliers_3px"], metrics["segm"]["AP"],
                                    base["segm"]["AP"] if base else None,
                                    _subset_mask_ap(run / f"results/eval/{experiment}/subsets.json"),
                                    _subset_mask_ap(run / f"results/eval/{baseline}/subsets.json") if base else {}))
    if len(set(splits.values())) > 1 or None in splits.values():
        raise ValueError("the runs do not share one split (results/split/train_val_coco.json differs or is "
                         f"missing): {', '.join(f'{r}: {d and d[:12]}' for r, d in splits.items())}")
    estimators = [p.estimator for p in points]
    if len(set(estimators)) != len(estimators):
        raise ValueError(f"two runs used the same flow source: {estimators}; one run per flow.estimator")
    if baseline and all(p.baseline_ap is None for p in points):
        raise FileNotFoundError(f"no run has results/eval/{baseline}/metrics.json (rule evaluate); give "
                                f"--baseline '' for none")
    return sorted(points, key=lambda p: p.epe)


def flow_axis_markdown(points: list[FlowAxisPoint], experiment: str, baseline: str | None) -> str:
    """The table 'EPE vs mask AP': one row per flow source, EPE and the share of pixels off by more than 3 px,
    mask AP [interval] of `experiment` per subset, and the baseline's from the runs that have it."""
    who = [experiment] + ([baseline] if baseline else [])
    heads = [f"{name} mask AP {subset}" for name in who for subset in FLOW_AXIS_SUBSETS]
    lines = ["| flow source | EPE (px) | > 3 px | " + " | ".join(heads) + " |",
             "|---|---:|---:|" + "---:|" * len(heads)]
    for p in points:
        cells = []
        for total, cells_of in ((p.mask_ap, p.subsets), (p.baseline_ap, p.baseline_subsets))[:len(who)]:
            for subset in FLOW_AXIS_SUBSETS:
                cell = cells_of.get(subset)
                cells.append(f"{ap_cell(cell[0])}{interval_text(cell[1], cell[2])}" if cell
                             else ap_cell(total) if subset == "all" else "–")
        name = "gt (oracle)" if p.estimator == "gt" else p.estimator
        lines.append(f"| {name} | {p.epe:.3f} | {100 * p.outliers:.1f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_flow_axis(points: list[FlowAxisPoint], experiment: str, baseline: str | None, out: Path) -> None:
    """Mask AP of `experiment` against the flow's EPE on the synthetic ground truth, one labelled point per
    flow source (gt, the oracle, at EPE 0); the flow-free baseline's mean AP over the runs as a dashed line."""
    if not points:
        raise ValueError("plot_flow_axis: no runs to plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    epe = [p.epe for p in points]
    ap = [p.mask_ap for p in points]
    ax.plot(epe, ap, "o-", color="tab:blue", label=f"{experiment} (two-stream)")
    for p in points:
        name = "gt (oracle)" if p.estimator == "gt" else p.estimator
        ax.annotate(f"{name}\n{p.mask_ap:.1f} AP, {p.epe:.2f} px", (p.epe, p.mask_ap), fontsize=8,
                    textcoords="offset points", xytext=(6, 6))
    base = [p.baseline_ap for p in points if p.baseline_ap is not None]
    if base:
        ax.axhline(float(np.mean(base)), color="k", linestyle="--", linewidth=1,
                   label=f"{baseline} (no flow): {np.mean(base):.1f} AP")
    ax.set_xlabel("flow EPE on the synthetic ground truth (px)")
    ax.set_ylabel("mask AP (train_val)")
    ax.set_xlim(left=min(0.0, min(epe)) - 0.05 * (max(epe) + 0.1), right=1.25 * max(epe) + 0.1)
    ax.margins(y=0.15)  # room for the labels above the points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Flow quality vs mask AP (same data, same split)")
    fig.tight_layout()
    save_figure(fig, out)


# --- Fig. 1: masks ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One train_val frame of the qualitative figures: its index row, identity and file."""

    row: int
    video_id: int
    frame_index: int
    file_name: str
    height: int
    width: int


def pick_examples(index_path: Path, count: int) -> list[Example]:
    """`count` frames of a split index: evenly spaced videos (in index order), the middle frame with at
    least one box of each; videos without boxes are passed over."""
    with h5py.File(index_path, "r") as f:
        video_id, frame_index = f["video_id"][:], f["frame_index"][:]
        offsets, height, width = f["box_offsets"][:], f["height"][:], f["width"][:]
        names = [n.decode() for n in f["file_name"][:]]
    boxes = np.diff(offsets)  # (frames,) boxes per frame
    videos = list(dict.fromkeys(video_id.tolist()))
    annotated = {v: [r for r in np.flatnonzero(video_id == v) if boxes[r] > 0] for v in videos}
    videos = [v for v in videos if annotated[v]]
    if not videos:
        raise ValueError(f"{index_path}: no frame has a box; nothing to show")
    picks = np.linspace(0, len(videos) - 1, min(count, len(videos))).round().astype(int)
    out = []
    for i in dict.fromkeys(picks.tolist()):
        rows = annotated[videos[i]]
        r = int(rows[len(rows) // 2])
        out.append(Example(r, int(video_id[r]), int(frame_index[r]), names[r], int(height[r]), int(width[r])))
    return out


def decode_masks(annotations: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """(D, H, W) bool masks of COCO annotations or results (boxes-only ground truth: the filled boxes)."""
    masks = np.zeros((len(annotations), height, width), bool)
    for k, ann in enumerate(annotations):
        masks[k] = annotation_mask(ann, height, width)
    return masks


def shown_detections(results: list[dict[str, Any]], min_score: float, max_shown: int,
                     overlap: float = 0.5) -> list[dict[str, Any]]:
    """Detections of one image as a reader would look at them: score >= min_score, best first, dropping one
    whose mask overlaps an already shown mask by IoU > overlap (class-agnostic), at most `max_shown`."""
    shown: list[dict[str, Any]] = []
    for r in sorted(results, key=lambda r: -r["score"]):
        if r["score"] < min_score or len(shown) == max_shown:
            break
        if shown:
            ious = mask_utils.iou([r["segmentation"]], [s["segmentation"] for s in shown], [0] * len(shown))
            if np.max(ious) > overlap:
                continue
        shown.append(r)
    return shown


def plot_mask_comparison(images: list[np.ndarray], columns: dict[str, list[np.ndarray]], row_labels: list[str],
                         out: Path) -> None:
    """Paper Fig. 1: a row per frame, a column per mask source. images: (H, W, 3) uint8 RGB per row;
    columns: title -> per row (D, H, W) bool masks, each instance in its own colour."""
    if any(len(masks) != len(images) for masks in columns.values()) or len(row_labels) != len(images):
        raise ValueError(f"plot_mask_comparison: {len(images)} frames, {len(row_labels)} labels, "
                         f"column lengths {[len(m) for m in columns.values()]}")
    ncols = 1 + len(columns)
    fig, axes = plt.subplots(len(images), ncols, figsize=(3.0 * ncols, 2.6 * len(images)), squeeze=False)
    for i, image in enumerate(images):
        panels = [("frame", image)] + [(title, blend_masks(image, masks[i])) for title, masks in columns.items()]
        for j, (title, picture) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(picture)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


# --- Fig. 3: activations ----------------------------------------------------------------------------------

@torch.no_grad()
def stream_activations(model: TwoStreamCondInst, images: Tensor, flows: Tensor,
                       image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Paper Fig. 3: channel-mean |P3| of the image-stream and of the flow-stream FPN. images, flows
    (N, 3, H, W) RGB [0, 255], H, W multiples of 32 -> two (N, H/8, W/8) float tensors. The shared backbone
    sees images and flows in one batch, as in TwoStreamCondInst._features."""
    if model.fpn_flow is None or "p3" not in model.fpn_flow.levels:
        raise ValueError("stream_activations: the model has no flow-stream P3 (a two-stream model using motion "
                         "for detection, or for masks from p3, is needed)")
    n = images.shape[0]
    x = torch.cat([model.backbone.normalize(images, image_sizes),
                   model.backbone.normalize(flows, image_sizes)])  # (2N, 3, H, W)
    c3, c4, c5 = model.backbone(x)
    p3_image = model.fpn_image(c3[:n], c4[:n], c5[:n])["p3"]  # (N, C, H/8, W/8)
    p3_flow = model.fpn_flow(c3[n:], c4[n:], c5[n:])["p3"]
    return p3_image.abs().mean(dim=1), p3_flow.abs().mean(dim=1)  # (N, C, H/8, W/8) -> (N, H/8, W/8)


def plot_activations(images: list[np.ndarray], flows: list[np.ndarray], image_maps: list[np.ndarray],
                     flow_maps: list[np.ndarray], row_labels: list[str], out: Path) -> None:
    """Paper Fig. 3: per row the frame, its RGB-encoded flow, and the appearance and motion activation maps
    ((h, w) float each, shown over the frame's extent, each map scaled to its own range)."""
    if not (len(images) == len(flows) == len(image_maps) == len(flow_maps) == len(row_labels)):
        raise ValueError("plot_activations: one frame, flow, two maps and a label per row")
    titles = ("frame", "flow (RGB-encoded)", "appearance: |P3| image stream", "motion: |P3| flow stream")
    fig, axes = plt.subplots(len(images), 4, figsize=(12, 2.6 * len(images)), squeeze=False)
    for i in range(len(images)):
        h, w = images[i].shape[:2]
        for j, picture in enumerate((images[i], flows[i], image_maps[i], flow_maps[i])):
            ax = axes[i, j]
            if j < 2:
                ax.imshow(picture)
            else:
                ax.imshow(picture, cmap="inferno", extent=(0, w, h, 0), interpolation="bilinear")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


# --- subset AP --------------------------------------------------------------------------------------------

def plot_subset_ap(runs: dict[str, dict[str, Any]], out: Path) -> None:
    """Mask and box AP per object subset, a bar per experiment with its bootstrap interval as error bar.
    runs: label -> the contents of the experiment's subsets.json (model.subsets); an AP that does not exist
    (no object of the subset) is left out."""
    if not runs:
        raise ValueError("plot_subset_ap: no experiments to plot")
    names = list(next(iter(runs.values()))["subsets"])
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(names) + 2), 3.6), sharey=True, squeeze=False)
    x = np.arange(len(names))
    width = 0.8 / len(runs)
    for ax, (iou_type, title) in zip(axes[0], (("segm", "mask AP"), ("bbox", "box AP"))):
        for j, (label, run) in enumerate(runs.items()):
            stats = [run["subsets"][n][iou_type]["AP"] for n in names]
            keep = [i for i, st in enumerate(stats) if st["value"] is not None]
            values = np.array([stats[i]["value"] for i in keep])
            spans = [stats[i]["interval"] or [stats[i]["value"]] * 2 for i in keep]
            errors = np.abs(np.array(spans).T - values) if keep else None  # (2, n): below, above
            ax.bar(x[keep] + (j - (len(runs) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=label)
        ax.set_xticks(x, [f"{n}\n({next(iter(runs.values()))['subsets'][n]['objects']})" for n in names],
                      fontsize=8)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("AP (%), 95 % interval over videos")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("AP per object subset (objects in brackets; the others ignored)")
    fig.tight_layout()
    save_figure(fig, out)


# --- tables -----------------------------------------------------------------------------------------------

def _inline(text: str) -> str:
    """Escaped HTML of one markdown line, with **bold** kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text.strip()))


def markdown_tables_html(markdown: str) -> str:
    """HTML of the markdown model.tables writes: '# ' headings, paragraphs and pipe tables (the
    alignment row's ':' sets right alignment)."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#'))}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c for c in lines[i].strip().strip("|").split("|")])
                i += 1
            aligns = ["right" if c.strip().endswith(":") else "left" for c in block[1]] if len(block) > 1 else []
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in block[0]) + "</tr>")
            for cells in block[2:]:
                out.append("<tr>" + "".join(f'<td style="text-align:{a}">{_inline(c)}</td>'
                                            for c, a in zip(cells, aligns)) + "</tr>")
            out.append("</table>")
            continue
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def tables_page(tables: dict[str, str]) -> str:
    """One HTML page of the markdown tables (name -> markdown), in name order."""
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}th{background:#eee}")
    body = "\n".join(markdown_tables_html(tables[name]) for name in sorted(tables))
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><style>{style}</style></head><body>\n{body}\n</body></html>\n"


# --- CLI --------------------------------------------------------------------------------------------------

def cmd_curves(args: argparse.Namespace) -> None:
    """Training curves of every experiment, from the metrics.jsonl beside each final.pt."""
    experiments = json.loads(args.experiments)
    curves = {experiment_label(p.parent.name, experiments, trained_backbone(p)):
              read_metrics(p.parent / "metrics.jsonl") for p in args.final}
    plot_training_curves(curves, args.out)


def cmd_flow_quality(args: argparse.Namespace) -> None:
    """Flow quality bars from quality.json."""
    plot_flow_quality(json.loads(args.quality.read_text()), args.out)


def cmd_flow_axis(args: argparse.Namespace) -> None:
    """EPE vs mask AP over the run directories of the flow-quality axis: the figure, and the table with --table."""
    points = collect_flow_axis(args.runs, args.experiment, args.baseline)
    plot_flow_axis(points, args.experiment, args.baseline, args.out)
    if args.table:
        write_bytes_atomic(args.table, flow_axis_markdown(points, args.experiment, args.baseline).encode())
    for p in points:
        print(f"{p.run}: {p.estimator} EPE {p.epe:.3f} px ({100 * p.outliers:.1f}% > 3 px), "
              f"{args.experiment} mask AP {p.mask_ap:.1f}" +
              (f", {args.baseline} {p.baseline_ap:.1f}" if p.baseline_ap is not None else ""))


def cmd_masks(args: argparse.Namespace) -> None:
    """Fig. 1 from the evaluated detections (results/eval/<exp>/coco_results.json) and the ground truth."""
    experiments = json.loads(args.experiments)
    gt = json.loads(args.gt.read_text())
    image_ids = {(im["video_id"], im["frame_index"]): im["id"] for im in gt["images"]}
    examples = pick_examples(args.index, args.examples)
    images, labels, gt_masks = [], [], []
    for ex in examples:
        if (ex.video_id, ex.frame_index) not in image_ids:
            raise KeyError(f"{args.gt}: no image for video {ex.video_id} frame {ex.frame_index} of {args.index}; "
                           f"rerun rules split and frame_index")
        image_id = image_ids[(ex.video_id, ex.frame_index)]
        images.append(read_frame(args.frames / ex.file_name, ex.video_id, ex.frame_index, ex.height, ex.width))
        labels.append(f"video {ex.video_id}, frame {ex.frame_index}")
        gt_masks.append(decode_masks([a for a in gt["annotations"] if a["image_id"] == image_id],
                                     ex.height, ex.width))
    columns = {"ground truth": gt_masks}
    for path in args.results:
        results = json.loads(path.read_text())
        per_image: dict[int, list[dict[str, Any]]] = {}
        for r in results:
            per_image.setdefault(r["image_id"], []).append(r)
        backbone = json.loads((path.parent / "metrics.json").read_text())["backbone"]  # evaluate wrote both
        columns[experiment_label(path.parent.name, experiments, backbone)] = [
            decode_masks(shown_detections(per_image.get(image_ids[(ex.video_id, ex.frame_index)], []),
                                          args.show_thresh, args.max_shown), ex.height, ex.width)
            for ex in examples]
    plot_mask_comparison(images, columns, labels, args.out)


def cmd_activations(args: argparse.Namespace) -> None:
    """Fig. 3 from a two-stream checkpoint on the train_val frames of Fig. 1."""
    params = params_from_json(EvaluateParams, args.params, "--params (config section evaluate)")
    model, _ = load_trained(args.checkpoint, "cpu")
    frames = EvalFrames(args.index, args.frames, args.flow, params.min_size, params.max_size)
    examples = pick_examples(args.index, args.examples)
    items = [frames[ex.row] for ex in examples]
    images, flows, image_maps, flow_maps = [], [], [], []
    for item in items:  # one frame per pass: no padding beyond the frame's own multiple of 32
        batch = pad_batch([item])
        act_image, act_flow = stream_activations(model, batch["images"], batch["flows"], batch["image_sizes"])
        h, w = item["image"].shape[:2]
        h8, w8 = -(-h // 8), -(-w // 8)  # the stride-8 cells covering the frame, padding left out
        images.append(item["image"]), flows.append(item["flow"])
        image_maps.append(act_image[0, :h8, :w8].numpy()), flow_maps.append(act_flow[0, :h8, :w8].numpy())
    labels = [f"video {ex.video_id}, frame {ex.frame_index}" for ex in examples]
    plot_activations(images, flows, image_maps, flow_maps, labels, args.out)


def cmd_tables(args: argparse.Namespace) -> None:
    """The tables rule's markdown files as one HTML page."""
    tables = {p.name: p.read_text() for p in sorted(args.tables.glob("*.md"))}
    if not tables:
        raise FileNotFoundError(f"{args.tables}: no *.md tables; rerun rule tables")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, tables_page(tables).encode())


def cmd_subsets(args: argparse.Namespace) -> None:
    """Subset AP bars of the experiments' subsets.json files."""
    runs = [json.loads(p.read_text()) for p in args.subsets]
    plot_subset_ap({f"{r['experiment']} ({backbone_label(r['backbone'])})": r for r in runs}, args.out)


def main(argv: list[str] | None = None) -> None:
    """CLI: one figure per subcommand (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="figure", required=True)
    p = sub.add_parser("curves", help="training curves")
    p.add_argument("--final", nargs="+", required=True, type=Path, help="results/train/<exp>/final.pt files")
    p.add_argument("--experiments", required=True, help="the experiments config section (JSON)")
    p.set_defaults(run=cmd_curves)
    p = sub.add_parser("flow-quality", help="flow EPE on the synthetic ground truth")
    p.add_argument("--quality", required=True, type=Path, help="results/flow/quality.json")
    p.set_defaults(run=cmd_flow_quality)
    p = sub.add_parser("flow-axis", help="mask AP against flow EPE over runs with different flow.estimator")
    p.add_argument("--runs", nargs="+", required=True, type=Path, help="workflow directories (--directory)")
    p.add_argument("--experiment", default="ours", help="the flow-using experiment whose mask AP is plotted")
    p.add_argument("--baseline", default="boxinst", help="a flow-free experiment drawn as a line ('' for none)")
    p.add_argument("--table", type=Path, default=None, help="also write the table 'EPE vs mask AP' (markdown)")
    p.set_defaults(run=cmd_flow_axis)
    p = sub.add_parser("masks", help="Fig. 1: ground truth and each experiment's masks")
    p.add_argument("--gt", required=True, type=Path, help="results/split/train_val_coco.json")
    p.add_argument("--index", required=True, type=Path, help="results/index/train_val.h5")
    p.add_argument("--frames", required=True, type=Path, help="<dataset root>/JPEGImages")
    p.add_argument("--results", nargs="+", required=True, type=Path, help="results/eval/<exp>/coco_results.json")
    p.add_argument("--experiments", required=True, help="the experiments config section (JSON)")
    p.add_argument("--show-thresh", type=float, default=0.3, help="lowest score shown")
    p.add_argument("--max-shown", type=int, default=10, help="most detections shown per frame")
    p.set_defaults(run=cmd_masks)
    p = sub.add_parser("activations", help="Fig. 3: appearance and motion P3 activations")
    p.add_argument("--checkpoint", required=True, type=Path, help="a two-stream results/train/<exp>/final.pt")
    p.add_argument("--index", required=True, type=Path, help="results/index/train_val.h5")
    p.add_argument("--frames", required=True, type=Path, help="<dataset root>/JPEGImages")
    p.add_argument("--flow", required=True, type=Path, help="folder of the flow shard stores")
    p.add_argument("--params", required=True, help="the evaluate config section (JSON)")
    p.set_defaults(run=cmd_activations)
    p = sub.add_parser("tables", help="the tables as one HTML page")
    p.add_argument("--tables", required=True, type=Path, help="results/tables")
    p.set_defaults(run=cmd_tables)
    p = sub.add_parser("subsets", help="BoxInst vs Ours AP per object subset")
    p.add_argument("--subsets", nargs="+", required=True, type=Path, help="results/eval/<exp>/subsets.json files")
    p.set_defaults(run=cmd_subsets)
    for p in sub.choices.values():
        p.add_argument("--out", required=True, type=Path, help="the file to write (.png or .svg; .html for tables)")
        if p.prog.split()[-1] in ("masks", "activations"):
            p.add_argument("--examples", type=int, default=4, help="frames shown (rows)")
    args = ap.parse_args(argv)
    log = setup_logging()
    args.run(args)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
