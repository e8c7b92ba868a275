"""model.figures: the plots write readable files; activations, detection choice, example choice and the
tables page against hand-worked or directly computed values."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from model.figures import (decode_masks, experiment_label, main, markdown_tables_html, pick_examples,
                           plot_activations, plot_flow_quality, plot_mask_comparison, plot_training_curves,
                           read_metrics, save_figure, shown_detections, stream_activations, trained_backbone)
from model.network import ModelParams, TwoStreamCondInst
from pipeline.io import params_from_json

TINY_MODEL = Path(__file__).parent / "tiny_model.json"


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE of a (H, W) 0/1 mask, counts as str (as in COCO results)."""
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode("ascii")
    return out


def assert_png(path: Path, min_side: int = 100) -> np.ndarray:
    """The PNG at `path`, decoded; it exists and is at least min_side pixels on each side."""
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    assert min(image.shape[:2]) >= min_side
    return image


def test_training_curves_from_metrics_files(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": 40, "lr": 0.01, "loss": 2.0, "loss_cls": 0.5}, {"step": 20, "lr": 0.005, "loss": 3.0},
             {"step": 60, "lr": 0.01, "loss": float("nan"), "skipped": True},
             {"step": 80, "lr": 0.01, "loss": 1.5, "steps": 20, "skipped": 3},  # mean of 17 finite steps
             {"step": 100, "lr": 0.01, "loss": float("nan"), "steps": 20, "skipped": 20}]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    records = read_metrics(log)
    assert [r["step"] for r in records] == [20, 40, 80]  # sorted, records of skipped steps only left out
    plot_training_curves({"BoxInst": records, "Ours": [{"step": 20, "lr": 0.005, "loss": 2.5}]},
                         tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_metrics(tmp_path / "bad.jsonl")


def test_flow_quality_plot(tmp_path: Path) -> None:
    quality = {"estimator": "dis", "outlier_threshold_px": 3.0, "overall": {"epe": 0.2, "outliers_3px": 0.01},
               "videos": {"2": {"epe": 0.3, "outliers_3px": 0.02}, "10": {"epe": 0.1, "outliers_3px": 0.0}}}
    plot_flow_quality(quality, tmp_path / "flow.png")
    assert_png(tmp_path / "flow.png")
    with pytest.raises(KeyError, match="rerun rule flow_quality"):
        plot_flow_quality({"videos": {}}, tmp_path / "broken.png")


def test_mask_comparison_and_activation_plots_write_png_and_svg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 32, 3), np.uint8) for _ in range(2)]
    masks = np.zeros((1, 24, 32), bool)
    masks[0, 5:15, 5:20] = True
    columns = {"ground truth": [masks, masks[:0]], "ours": [masks, masks]}
    plot_mask_comparison(images, columns, ["a", "b"], tmp_path / "fig1.png")
    assert_png(tmp_path / "fig1.png")
    maps = [rng.random((3, 4)) for _ in range(2)]
    plot_activations(images, images, maps, maps, ["a", "b"], tmp_path / "fig3.svg")
    assert (tmp_path / "fig3.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="frames, 1 labels"):
        plot_mask_comparison(images, columns, ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        import matplotlib.pyplot as plt
        save_figure(plt.figure(), tmp_path / "x.jpg")
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_stream_activations_equal_the_fpn_outputs_of_the_forward_pass() -> None:
    params = params_from_json(ModelParams, TINY_MODEL.read_text(), "tiny_model.json")
    torch.manual_seed(0)
    model = TwoStreamCondInst(params, num_classes=2).eval()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8).float()
    flows = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8).float()
    sizes = [(64, 96), (50, 70)]
    captured = {}
    hooks = [model.fpn_image.register_forward_hook(lambda m, i, o: captured.__setitem__("image", o["p3"])),
             model.fpn_flow.register_forward_hook(lambda m, i, o: captured.__setitem__("flow", o["p3"]))]
    model.predict(images, flows, sizes, sizes, 0.05, 0.6, 10, 5, 0.5)  # the network's own inference path
    for h in hooks:
        h.remove()
    act_image, act_flow = stream_activations(model, images, flows, sizes)
    assert act_image.shape == (2, 8, 12) and act_flow.shape == (2, 8, 12)
    # channel-mean |P3|, one channel at a time
    for act, p3 in ((act_image, captured["image"]), (act_flow, captured["flow"])):
        expected = sum(p3[:, c].abs() for c in range(p3.shape[1])) / p3.shape[1]
        torch.testing.assert_close(act, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(act_image, act_flow)
    boxinst = TwoStreamCondInst(params_from_json(
        ModelParams, json.dumps({**json.loads(TINY_MODEL.read_text()), "two_stream": False}), "x"), 2).eval()
    with pytest.raises(ValueError, match="no flow-stream P3"):
        stream_activations(boxinst, images, flows, sizes)


def test_shown_detections_threshold_overlap_and_count() -> None:
    a = np.zeros((10, 10), np.uint8)
    a[0:5, 0:5] = 1
    b = a.copy()
    b[0:5, 0:6] = 1  # IoU with a: 25 / 30 > 0.5
    c = np.zeros((10, 10), np.uint8)
    c[6:9, 6:9] = 1
    dets = [{"score": 0.5, "segmentation": rle(b), "tag": "b"}, {"score": 0.9, "segmentation": rle(a), "tag": "a"},
            {"score": 0.4, "segmentation": rle(c), "tag": "c"}, {"score": 0.1, "segmentation": rle(c), "tag": "low"}]
    assert [d["tag"] for d in shown_detections(dets, 0.3, 10)] == ["a", "c"]
    assert [d["tag"] for d in shown_detections(dets, 0.3, 1)] == ["a"]
    assert [d["tag"] for d in shown_detections(dets, 0.3, 10, overlap=0.9)] == ["a", "b", "c"]


def test_decode_masks_reads_compressed_and_uncompressed_rle() -> None:
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 2:5] = 1
    uncompressed = {"size": [4, 5], "counts": [9, 2, 2, 2, 2, 2, 1]}  # column-major runs, background first
    masks = decode_masks([{"segmentation": rle(m)}, {"segmentation": uncompressed}], 4, 5)
    np.testing.assert_array_equal(masks[0], m.astype(bool))
    np.testing.assert_array_equal(masks[1], m.astype(bool))
    with pytest.raises(ValueError, match="annotation 7: expected an RLE"):
        decode_masks([{"id": 7, "segmentation": [[0, 0, 1, 1, 2, 0]]}], 4, 5)


def test_pick_examples_takes_the_middle_annotated_frame_of_evenly_spaced_videos(tmp_path: Path) -> None:
    # videos 5 (4 frames), 9 (3 frames, none annotated), 11 (2 frames), 12 (5 frames), 20 (1 frame)
    video_id = [5] * 4 + [9] * 3 + [11] * 2 + [12] * 5 + [20]
    frame_index = list(range(4)) + list(range(3)) + list(range(2)) + list(range(5)) + [0]
    boxes = [0, 1, 1, 1] + [0, 0, 0] + [1, 2] + [1, 0, 1, 1, 0] + [3]
    path = tmp_path / "index.h5"
    with h5py.File(path, "w") as f:
        f["video_id"], f["frame_index"] = np.array(video_id), np.array(frame_index)
        f["box_offsets"] = np.concatenate([[0], np.cumsum(boxes)])
        f["height"], f["width"] = np.full(15, 24), np.full(15, 32)
        f["file_name"] = np.array([f"v{v}/{t:05d}.jpg".encode() for v, t in zip(video_id, frame_index)])
    # annotated videos: 5 (frames 1,2,3), 11 (0,1), 12 (0,2,3), 20 (0); 3 of 4 evenly spaced: 5, 11 or 12, 20
    picks = pick_examples(path, 3)
    assert [(e.video_id, e.frame_index) for e in picks] == [(5, 2), (12, 2), (20, 0)]
    assert picks[0].row == 2 and picks[0].file_name == "v5/00002.jpg" and picks[0].height == 24
    assert [(e.video_id, e.frame_index) for e in pick_examples(path, 10)] == [(5, 2), (11, 1), (12, 2), (20, 0)]


def test_tables_page_from_markdown(tmp_path: Path) -> None:
    markdown = "# Table 1: main\n\nEach cell: ours (paper).\n\n| | mask AP |\n|---|---:|\n| Ours <R-50> | 0.4 (29.0) |\n"
    assert markdown_tables_html(markdown).splitlines() == [
        "<h2>Table 1: main</h2>", "<p>Each cell: ours (paper).</p>", "<table>",
        "<tr><th></th><th>mask AP</th></tr>",
        '<tr><td style="text-align:left">Ours &lt;R-50&gt;</td><td style="text-align:right">0.4 (29.0)</td></tr>',
        "</table>"]
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "table2.md").write_text("# Table 2\n")
    (tables / "table1.md").write_text(markdown)
    main(["tables", "--tables", str(tables), "--out", str(tmp_path / "out" / "tables.html")])
    page = (tmp_path / "out" / "tables.html").read_text()
    assert page.index("Table 1: main") < page.index("Table 2") and page.rstrip().endswith("</html>")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="rerun rule tables"):
        main(["tables", "--tables", str(empty), "--out", str(tmp_path / "x.html")])


def test_experiment_labels_name_the_backbone_trained(tmp_path: Path) -> None:
    """The paper row's method with the backbone the checkpoint was trained with, not the paper's R-50."""
    experiments = {"boxinst": {"paper": "boxinst_r50"}, "big": {"paper": "ours_r101"}, "x": {"paper": None}}
    torch.save({"model_params": {"backbone": "resnet18"}}, tmp_path / "final.pt")
    backbone = trained_backbone(tmp_path / "final.pt")
    assert experiment_label("boxinst", experiments, backbone) == "BoxInst, R-18 (boxinst)"
    assert experiment_label("big", experiments, "resnet101") == "Ours, R-101 (big)"
    assert experiment_label("x", experiments, "resnet50") == "x, R-50 (x)"
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(KeyError, match="other.pt.*rule train"):
        trained_backbone(tmp_path / "other.pt")
