"""model.predict on a few synthetic frames with a tiny randomly initialised two-stream model in final.pt form."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import yaml

from model.evaluate import EvaluateParams
from model.network import ModelParams, TwoStreamCondInst
from model.predict import Frame, chunk_flow, chunks_with_context, load_checkpoint, main, run
from pipeline.flow import DisEstimator, FlowParams, encode_video, video_flow
from pipeline.io import params_from_json

from damage import damage_frame, leftovers

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = Path(__file__).parent / "tiny_model.json"
EVALUATE = {"min_size": 64, "max_size": 96, "score_thresh": 0.0, "nms_thresh": 0.6, "topk_per_level": 50,
            "max_dets": 5, "mask_thresh": 0.5}
FLOW = {"estimator": "dis", "shard_size": 4, "gma": {"checkpoint": "none.pth", "iters": 2, "dtype": "float32"},
        "raft": {"model": "small", "weights": "C_T_V2", "iters": 2}, "dis": {"preset": "fast"}}
CATEGORY_IDS, CATEGORY_NAMES = [3, 7], ["ellipse", "star"]


def synthetic_frames(count: int = 5, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: a smooth random background and a textured square moving 3 px right per frame."""
    rng = np.random.default_rng(1)
    background = cv2.resize(rng.integers(0, 255, (12, 16, 3), np.uint8), (width, height),
                            interpolation=cv2.INTER_CUBIC)
    patch = rng.integers(0, 255, (16, 16, 3), np.uint8)
    frames = np.repeat(background[None], count, axis=0)
    for t in range(count):
        frames[t, 14:30, 8 + 3 * t:24 + 3 * t] = patch
    return frames


def save_final(path: Path, two_stream: bool = True, **extra) -> None:
    """A randomly initialised tiny network saved like model/train.py writes final.pt (with `extra` fields)."""
    raw = json.loads(TINY_MODEL.read_text())
    raw["two_stream"] = two_stream
    params = params_from_json(ModelParams, json.dumps(raw), "tiny_model.json")
    torch.manual_seed(0)
    model = TwoStreamCondInst(params, len(CATEGORY_IDS))
    torch.save({"model": model.state_dict(), "model_params": raw, "train_params": {}, "step": 0,
                "num_classes": len(CATEGORY_IDS), "category_ids": CATEGORY_IDS, "category_names": CATEGORY_NAMES,
                **extra}, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    save_final(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same frames as an MJPG video file and as a folder of PNGs holding the video's decoded frames."""
    root = tmp_path_factory.mktemp("inputs")
    frames = synthetic_frames()
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frames.shape[2], frames.shape[1]))
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()
    capture, folder, t = cv2.VideoCapture(str(video)), root / "frames", 0
    folder.mkdir()
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"f{t:03d}.png"), bgr)
        t += 1
    assert t == len(frames)
    return {"video": video, "folder": folder}


def predict(input_path: Path, checkpoint: Path, out: Path, batch_size: int = 2) -> dict:
    """Run the CLI and return what it wrote."""
    main(["--input", str(input_path), "--checkpoint", str(checkpoint), "--params", json.dumps(EVALUATE),
          "--flow-params", json.dumps(FLOW), "--out", str(out), "--batch-size", str(batch_size),
          "--overlay-thresh", "0.0", "--device", "cpu"])
    return {"results": json.loads((out / "results.json").read_text()),
            "images": json.loads((out / "images.json").read_text()),
            "overlays": sorted((out / "overlays").iterdir())}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_chunked_flow_equals_the_flow_of_the_whole_video(size: int) -> None:
    frames = synthetic_frames()
    expected = encode_video(video_flow(frames, DisEstimator("fast")))  # (T, H, W, 3)
    stream = (Frame(rgb, str(t), t) for t, rgb in enumerate(frames))
    got = np.concatenate([chunk_flow(chunk, before, after, DisEstimator("fast"))
                          for chunk, before, after in chunks_with_context(stream, size)])
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got.astype(int) - 128).max() > 0  # the square moves: the flow is not all zeros


def test_one_frame_input_gets_zero_flow() -> None:
    frame = Frame(synthetic_frames(1)[0], "a", 0)
    flow = chunk_flow([frame], None, None, DisEstimator("fast"))
    np.testing.assert_array_equal(flow, encode_video(np.zeros((1, 48, 64, 2), np.float32)))


def test_folder_predictions_decode_with_one_overlay_per_frame(inputs: dict[str, Path], checkpoint: Path,
                                                              tmp_path: Path) -> None:
    out = predict(inputs["folder"], checkpoint, tmp_path / "out")
    images = out["images"]["images"]
    assert [im["file_name"] for im in images] == [f"f{t:03d}.png" for t in range(5)]
    assert [im["id"] for im in images] == list(range(5)) and images[0]["height"] == 48
    assert [p.name for p in out["overlays"]] == [f"f{t:03d}.png.png" for t in range(5)]
    assert out["images"]["categories"] == [{"id": 3, "name": "ellipse"}, {"id": 7, "name": "star"}]
    assert out["results"], "score_thresh 0 must keep detections"
    per_image = {im["id"]: 0 for im in images}
    for r in out["results"]:
        per_image[r["image_id"]] += 1
        assert r["category_id"] in CATEGORY_IDS
        mask = mask_utils.decode(r["segmentation"])
        assert mask.shape == (48, 64)
        x, y, w, h = r["bbox"]
        assert 0 <= x and x + w <= 64 + 1e-3 and 0 <= y and y + h <= 48 + 1e-3
    assert all(1 <= n <= EVALUATE["max_dets"] for n in per_image.values())
    for path in out["overlays"]:
        overlay = cv2.imread(str(path))
        assert overlay.shape == (48, 64, 3)
        original = cv2.imread(str(inputs["folder"] / path.name.removesuffix(".png")))
        assert np.abs(overlay.astype(int) - original).max() > 0  # something was drawn


def test_video_file_equals_folder_of_its_frames(inputs: dict[str, Path], checkpoint: Path, tmp_path: Path) -> None:
    from_folder = predict(inputs["folder"], checkpoint, tmp_path / "folder", batch_size=2)
    from_video = predict(inputs["video"], checkpoint, tmp_path / "video", batch_size=2)
    assert from_video["results"] == from_folder["results"]
    assert [im["file_name"] for im in from_video["images"]["images"]] == [f"clip.avi:{t:06d}" for t in range(5)]
    assert [p.name for p in from_video["overlays"]] == [f"clip_{t:06d}.png" for t in range(5)]
    for a, b in zip(from_video["overlays"], from_folder["overlays"]):
        np.testing.assert_array_equal(cv2.imread(str(a)), cv2.imread(str(b)))


def test_same_stem_different_extensions_get_one_overlay_each(checkpoint: Path, tmp_path: Path) -> None:
    """a.jpg and a.png in one folder: two overlays, each its own frame (nothing drawn above score 1.1)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = synthetic_frames(2)
    cv2.imwrite(str(folder / "a.jpg"), np.ascontiguousarray(frames[0][..., ::-1]))
    cv2.imwrite(str(folder / "a.png"), np.ascontiguousarray(frames[1][..., ::-1]))
    main(["--input", str(folder), "--checkpoint", str(checkpoint), "--params", json.dumps(EVALUATE),
          "--flow-params", json.dumps(FLOW), "--out", str(tmp_path / "out"), "--overlay-thresh", "1.1",
          "--device", "cpu"])
    overlays = tmp_path / "out" / "overlays"
    assert sorted(p.name for p in overlays.iterdir()) == ["a.jpg.png", "a.png.png"]
    for name in ("a.jpg", "a.png"):
        np.testing.assert_array_equal(cv2.imread(str(overlays / f"{name}.png")), cv2.imread(str(folder / name)))
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert [im["file_name"] for im in images] == ["a.jpg", "a.png"]


def test_clear_errors(inputs: dict[str, Path], checkpoint: Path, tmp_path: Path) -> None:
    params = params_from_json(EvaluateParams, json.dumps(EVALUATE), "evaluate")
    flow = FlowParams.from_json(json.dumps(FLOW), "flow")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no frames"):
        run(empty, checkpoint, params, flow, tmp_path / "o1", "cpu", 2, 0.3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        run(broken, checkpoint, params, flow, tmp_path / "o2", "cpu", 2, 0.3)
    training = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "step": 3}, training)
    with pytest.raises(ValueError, match="ckpt.pt: no 'model_params'.*expected a mowis final checkpoint"):
        run(inputs["folder"], training, params, flow, tmp_path / "o3", "cpu", 2, 0.3)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.pt"):
        run(inputs["folder"], garbage, params, flow, tmp_path / "o4", "cpu", 2, 0.3)
    with pytest.raises(ValueError, match="--flow-params"):
        run(inputs["folder"], checkpoint, params, None, tmp_path / "o5", "cpu", 2, 0.3)


def _final_with(path: Path, change) -> Path:
    """A valid tiny final.pt at `path` with `change(state)` applied."""
    save_final(path)
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


FINAL_DEFECTS = {
    # name: (change to a valid final.pt, what the message says)
    "no category_ids": (lambda s: s.pop("category_ids"), "no 'category_ids'"),
    "num_classes a string": (lambda s: s.update(num_classes="2"), "num_classes is 2, expected a positive integer"),
    "category_ids one short": (lambda s: s.update(category_ids=[3]), "category_ids is not a list of 2 integers"),
    "category_names not strings": (lambda s: s.update(category_names=[1, 2]),
                                   "category_names is not a list of 2 strings"),
    "model_params with an unknown key": (lambda s: s["model_params"].update(colour="red"),
                                         "model_params do not build the network"),
    "model_params a string": (lambda s: s.update(model_params="resnet18"), "model_params is a str"),
    "weights of another class count": (lambda s: s.update(num_classes=3, category_ids=[3, 7, 9],
                                                          category_names=["a", "b", "c"]),
                                       "do not fit the network of its model_params: 0 missing keys; "
                                       "0 unexpected keys; 2 wrongly shaped keys"),
    "a tensor missing from the weights": (lambda s: s["model"].pop(next(iter(s["model"]))),
                                          "do not fit the network of its model_params: 1 missing keys"),
    "weights not tensors": (lambda s: s.update(model={"backbone.stem.0.weight": [1.0]}),
                            "1 of 1 entries are not parameter name -> tensor"),
}


@pytest.mark.parametrize("defect", list(FINAL_DEFECTS))
def test_final_checkpoint_defects_name_the_file_and_field(tmp_path: Path, defect: str) -> None:
    change, message = FINAL_DEFECTS[defect]
    path = _final_with(tmp_path / "final.pt", change)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, "cpu")
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)
    assert "expected a mowis final checkpoint" in str(info.value)


def test_final_checkpoint_without_names_uses_category_ids(tmp_path: Path) -> None:
    path = _final_with(tmp_path / "final.pt", lambda s: s.pop("category_names"))
    _, final = load_checkpoint(path, "cpu")
    ids, names = final.category_ids, final.category_names
    assert ids == CATEGORY_IDS and names == ["3", "7"]


def test_boxinst_needs_no_flow(inputs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "boxinst.pt"
    save_final(path, two_stream=False)
    params = params_from_json(EvaluateParams, json.dumps(EVALUATE), "evaluate")
    info = run(inputs["folder"], path, params, None, tmp_path / "out", "cpu", 4, 0.3)
    assert len(info["images"]) == 5 and len(list((tmp_path / "out" / "overlays").iterdir())) == 5


@pytest.mark.parametrize("how", ["truncated_jpeg", "wrong_size"])
def test_bad_frame_stops_prediction_naming_it_and_leaves_nothing(inputs: dict[str, Path], checkpoint: Path,
                                                                 tmp_path: Path, how: str) -> None:
    """The last of five JPEG frames is damaged: the error names file and frame, and although frames 0 and 1 were
    predicted and their overlays written (to the temporary folder), no overlay, JSON, output folder or temporary
    is left."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for png in sorted(inputs["folder"].iterdir()):
        cv2.imwrite(str(folder / f"{png.stem}.jpg"), cv2.imread(str(png)))
    bad = folder / "f004.jpg"
    damage_frame(bad, how)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        predict(folder, checkpoint, out)
    expected = {"truncated_jpeg": f"{bad}: frame 4 is a truncated JPEG",
                "wrong_size": f"{bad}: frame 4 is 64x52, the first frame 64x48"}[how]
    assert expected in str(err.value)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("evaluated", [True, False])
def test_one_line_predict_on_a_video(inputs: dict[str, Path], tmp_path: Path, evaluated: bool,
                                     capsys: pytest.CaptureFixture) -> None:
    """--input, --checkpoint and --out only: the flow section comes from final.pt, the evaluate section from
    the workflow's metrics.json beside it (else the method's settings at the training size); the video gets
    overlay.mp4 with one frame per input frame."""
    checkpoint = tmp_path / "results/train/ours/final.pt"
    checkpoint.parent.mkdir(parents=True)
    save_final(checkpoint, flow_params=FLOW, train_params={"min_sizes": [48, 64], "max_size": 96})
    if evaluated:
        metrics = tmp_path / "results/eval/ours/metrics.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"evaluate_params": EVALUATE}))
    out = tmp_path / "predictions"
    main(["--input", str(inputs["video"]), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"])
    log = capsys.readouterr().err
    source = "results/eval/ours/metrics.json" if evaluated else "the method's settings"
    assert source in log and "min_size=64" in log, log[-2000:]
    if not evaluated:  # the thresholds are the default config's evaluate section, read from config.yaml
        defaults = yaml.safe_load((REPO / "config.yaml").read_text())["evaluate"]
        assert f"nms_thresh={defaults['nms_thresh']}, topk_per_level={defaults['topk_per_level']}" in log, log
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == len(synthetic_frames()) == len(json.loads((out / "images.json").read_text())["images"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_trained_model_loads_without_its_pretrained_weights(tmp_path: Path) -> None:
    """A final.pt trained from ImageNet weights (model.weights a path, gone since) loads for evaluation and
    predict: the backbone file is not read again, the trained weights fill the frozen-BN layout."""
    raw = {**json.loads(TINY_MODEL.read_text()), "weights": str(tmp_path / "gone" / "resnet18.pth")}
    params = params_from_json(ModelParams, json.dumps(raw), "tiny_model.json")
    with pytest.raises(FileNotFoundError, match="resnet18.pth"):
        TwoStreamCondInst(params, len(CATEGORY_IDS))
    torch.manual_seed(0)
    trained = TwoStreamCondInst(params, len(CATEGORY_IDS), load_weights=False)
    path = tmp_path / "final.pt"
    torch.save({"model": trained.state_dict(), "model_params": raw, "train_params": {}, "step": 0,
                "num_classes": len(CATEGORY_IDS), "category_ids": CATEGORY_IDS, "category_names": CATEGORY_NAMES},
               path)
    model, _ = load_checkpoint(path, "cpu")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
