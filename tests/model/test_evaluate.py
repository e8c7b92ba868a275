"""Detections to COCO results, a wrong checkpoint named clearly, padding, and bad inputs named and leaving nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from model.coco_eval import evaluate_results, load_coco
from model.evaluate import (EvalFrames, EvaluateParams, HostDetections, ResultsFile, encode_masks, fortran_masks,
                            load_trained, main, mask_runs, pad_batch, to_coco_results, to_host)
from model.network import Detections
from pipeline.split import to_coco
from pipeline.ytvis import load_ytvis

from conftest import FLOW_DAMAGE, FRAME_DAMAGE, damaged_copy
from damage import leftovers
from test_coco_eval import assert_same_metrics
from test_predict import EVALUATE, save_final


def test_detections_become_coco_results_that_decode_back() -> None:
    masks = torch.zeros((2, 6, 8), dtype=torch.bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 0:6, 0:1] = True
    det = Detections(boxes_xyxy=torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 1.0, 6.0]]),
                     scores=torch.tensor([0.9, 0.4]), classes=torch.tensor([1, 0]), masks=masks)
    out = to_coco_results(det, image_id=7, category_ids=[3, 5])
    assert [r["category_id"] for r in out] == [5, 3]
    assert out[0]["bbox"] == [2.0, 1.0, 3.0, 3.0] and out[0]["image_id"] == 7
    assert out[1]["score"] == pytest.approx(0.4)
    for r, m in zip(out, masks.numpy()):
        assert isinstance(r["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]), m.astype(np.uint8))


def test_no_detections_give_no_results() -> None:
    det = Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                     torch.zeros((0, 6, 8), dtype=torch.bool))
    assert to_coco_results(det, 1, [1]) == []


def test_pad_batch_pads_to_32_bottom_right() -> None:
    items = [{"image": np.full((40, 50, 3), 7, np.uint8), "flow": np.full((40, 50, 3), 9, np.uint8),
              "orig_hw": (80, 100), "video_id": 1, "frame_index": 0},
             {"image": np.full((30, 70, 3), 1, np.uint8), "flow": np.full((30, 70, 3), 2, np.uint8),
              "orig_hw": (60, 140), "video_id": 1, "frame_index": 1}]
    b = pad_batch(items)
    assert b["images"].shape == (2, 3, 64, 96) and b["flows"].shape == (2, 3, 64, 96)
    assert b["images"][0, :, :40, :50].eq(7).all() and b["images"][0, :, 40:, :].eq(0).all()
    assert b["flows"][1, :, :30, :70].eq(2).all() and b["flows"][1, :, :, 70:].eq(0).all()
    assert b["image_sizes"] == [(40, 50), (30, 70)] and b["output_sizes"] == [(80, 100), (60, 140)]


def test_a_training_checkpoint_is_not_a_final_one(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "step": 3}, path)
    with pytest.raises(ValueError, match=f"{path}: no 'model_params', 'num_classes', 'category_ids'"):
        load_trained(path, "cpu")


@pytest.fixture(scope="module")
def two_stream_final(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-stream final.pt (it reads flow at inference)."""
    path = tmp_path_factory.mktemp("final") / "final.pt"
    save_final(path, two_stream=True)
    return path


@pytest.mark.parametrize("how", FRAME_DAMAGE + FLOW_DAMAGE)
def test_bad_input_fails_evaluation_naming_it_and_writes_nothing(tiny_data: dict, two_stream_final: Path,
                                                                 tmp_path: Path, how: str) -> None:
    """A damaged frame or flow store of one train_val frame stops `python -m model.evaluate` with an error naming
    the file or store, the video and the frame; neither metrics.json nor the results file nor a temporary is left."""
    paths, expected = damaged_copy(tiny_data, tmp_path, how)
    dataset = load_ytvis(paths["root"], check_files=False)  # the header check would find the wrong size
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(to_coco(dataset, [v.id for v in dataset.videos])))
    out = tmp_path / "eval"
    with pytest.raises(ValueError) as err:
        main(["--checkpoint", str(two_stream_final), "--index", str(paths["index"]), "--gt", str(gt),
              "--frames", str(paths["frames"]), "--flow", str(paths["flow"]), "--params", json.dumps(EVALUATE),
              "--experiment", "tiny", "--dataset", "tiny", "--out", str(out / "metrics.json"),
              "--results", str(out / "results.json"), "--batch-size", "12", "--workers", "0", "--device", "cpu"])
    assert expected in str(err.value)
    assert not out.exists() and leftovers(tmp_path) == []


def test_evaluation_logs_its_phases_and_cocoeval_summary(tiny_data: dict, two_stream_final: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The log names each phase (ground truth, prediction, scoring) and keeps COCOeval's summary for both IoU
    types; metrics.json records the evaluate section it used (predict reads it back)."""
    dataset = load_ytvis(tiny_data["root"], check_files=False)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(to_coco(dataset, [v.id for v in dataset.videos])))
    out = tmp_path / "eval"
    main(["--checkpoint", str(two_stream_final), "--index", str(tiny_data["index"]), "--gt", str(gt),
          "--frames", str(tiny_data["frames"]), "--flow", str(tiny_data["flow"]), "--params", json.dumps(EVALUATE),
          "--experiment", "tiny", "--dataset", "tiny", "--out", str(out / "metrics.json"),
          "--results", str(out / "results.json"), "--batch-size", "12", "--workers", "0", "--device", "cpu"])
    log = capsys.readouterr().err
    for phase in ("ground truth", "predicting", "scoring them with COCOeval", "COCOeval segm", "COCOeval bbox"):
        assert phase in log, phase
    assert log.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 2
    assert "\r" not in log
    assert json.loads((out / "metrics.json").read_text())["evaluate_params"] == EVALUATE


def reference_results(det: Detections, image_id: int, category_ids: list[int]) -> list[dict]:
    """COCO results the way evaluation made them before it streamed (commit e4d5726): all masks copied to the
    host, converted with numpy and encoded in one call."""
    masks = det.masks.numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    return [{"image_id": image_id, "category_id": category_ids[c], "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
             "segmentation": {"size": r["size"], "counts": r["counts"].decode()}}
            for b, s, c, r in zip(det.boxes_xyxy.tolist(), det.scores.tolist(), det.classes.tolist(), rles)]


@pytest.mark.parametrize("shape", [(3, 7, 5), (0, 4, 6), (2, 1, 9), (5, 33, 70)])
def test_both_mask_routes_give_pycocotools_encoding(shape: tuple[int, int, int]) -> None:
    """The CPU route (OpenCV's Fortran layout, encoded a mask per call) and the GPU route (change positions found
    by torch, here on the CPU; run lengths compressed by pycocotools) give numpy's layout and encode's RLEs, for
    masks that start with 1 or 0, are empty or full."""
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) > 0.5
    if shape[0]:
        masks[0] = False
        masks[-1, 0, 0] = True
    if shape[0] > 2:
        masks[1] = True
    layout = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))
    expected = mask_utils.encode(layout) if shape[0] else []
    out = fortran_masks(masks)
    assert out.flags.f_contiguous and out.dtype == np.uint8
    np.testing.assert_array_equal(out, layout)
    assert encode_masks(out) == expected
    assert encode_masks(mask_runs(masks)) == expected


def test_results_file_streams_in_order_and_re_raises_a_failed_write(tmp_path: Path) -> None:
    """Images written by the background thread come out as one JSON array in submission order (empty: []); a
    write that fails (a class without a category id) surfaces in the caller."""
    rng = np.random.default_rng(3)
    dets = [Detections(torch.tensor([[0.0, 1.0, 4.0, 5.0]] * n), torch.linspace(0.9, 0.1, n),
                       torch.tensor([i % 2 for i in range(n)]), torch.from_numpy(rng.random((n, 6, 8)) > 0.4))
            for n in (2, 0, 3, 1)]
    path = tmp_path / "results.json"
    with path.open("wb") as f, ResultsFile(f, [3, 5], pending=2) as out:
        for image_id, det in enumerate(dets):
            out.add(to_host(det, image_id))
    assert out.count == 6
    expected = [r for i, d in enumerate(dets) for r in reference_results(d, i, [3, 5])]
    assert json.loads(path.read_text()) == expected
    with path.open("wb") as f, ResultsFile(f, [3, 5]) as out:  # masks as a GPU hands them over
        for image_id, det in enumerate(dets):
            host = to_host(det, image_id)
            out.add(HostDetections(image_id, host.boxes_xyxy, host.scores, host.classes, mask_runs(det.masks)))
    assert json.loads(path.read_text()) == expected
    with path.open("wb") as f, ResultsFile(f, [3]):
        pass
    assert json.loads(path.read_text()) == []
    with pytest.raises(IndexError), path.open("wb") as f, ResultsFile(f, [3]) as out:
        for image_id, det in enumerate(dets):
            out.add(to_host(det, image_id))


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_streamed_evaluation_equals_the_in_memory_one(tiny_data: dict, two_stream_final: Path, tmp_path: Path,
                                                      backend: str) -> None:
    """metrics.json and the results file of `python -m model.evaluate` (device layout, background RLE, results
    streamed to disk) equal pycocotools' COCOeval on the results built in memory the way evaluation did before;
    with faster-coco-eval the same numbers up to summation order."""
    dataset = load_ytvis(tiny_data["root"], check_files=False)
    coco = to_coco(dataset, [v.id for v in dataset.videos])
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(coco))
    out = tmp_path / "eval"
    main(["--checkpoint", str(two_stream_final), "--index", str(tiny_data["index"]), "--gt", str(gt),
          "--frames", str(tiny_data["frames"]), "--flow", str(tiny_data["flow"]), "--params", json.dumps(EVALUATE),
          "--experiment", "tiny", "--dataset", "tiny", "--out", str(out / "metrics.json"),
          "--results", str(out / "results.json"), "--batch-size", "3", "--workers", "0", "--device", "cpu",
          "--coco-backend", backend])
    model, category_ids = load_trained(two_stream_final, "cpu")
    frames = EvalFrames(tiny_data["index"], tiny_data["frames"], tiny_data["flow"], EVALUATE["min_size"],
                        EVALUATE["max_size"])
    image_ids = {(img["video_id"], img["frame_index"]): img["id"] for img in coco["images"]}
    p = EvaluateParams(**EVALUATE)
    expected = []
    for rows in np.array_split(np.arange(len(frames)), range(3, len(frames), 3)):  # evaluation's batches of 3
        batch = pad_batch([frames[row] for row in rows])
        dets = model.predict(batch["images"], batch["flows"], batch["image_sizes"], batch["output_sizes"],
                             p.score_thresh, p.nms_thresh, p.topk_per_level, p.max_dets, p.mask_thresh)
        for key, det in zip(batch["keys"], dets):
            expected += reference_results(det, image_ids[key], category_ids)
    assert len(expected) > len(frames) and any(r["segmentation"]["counts"] != expected[0]["segmentation"]["counts"]
                                               for r in expected)
    assert json.loads((out / "results.json").read_text()) == expected
    metrics = json.loads((out / "metrics.json").read_text())
    coco_gt = load_coco(coco)
    assert metrics["coco_backend"] == backend
    for iou_type in ("segm", "bbox"):
        if backend == "pycocotools":
            assert metrics[iou_type] == evaluate_results(coco_gt, expected, iou_type)
        else:
            assert_same_metrics(metrics[iou_type], evaluate_results(coco_gt, expected, iou_type))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "results.json"]
