"""Flow stage: DIS on known translations, the last-frame / one-frame rules, the shard store, atomicity;
the ground-truth source (gt) through the codec, torchvision's RAFT with random weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zarr

from pipeline import flow
from pipeline.flow import (DisEstimator, FlowParams, FlowStoreMismatch, GmaEstimator, file_sha256,
                           make_estimator, open_flow_store, store_attributes, video_flow, write_shard)
from pipeline.flow_codec import flow_to_rgb
from pipeline.identity import DIGEST_ATTR, store_digest
from pipeline.stores import CorruptStore, stored_frame
from pipeline.ytvis import load_ytvis

from damage import damage_frame, leftovers, read_one_shard
from manifests import write_test_manifest

REPO = Path(__file__).resolve().parents[2]
SECTION = {"estimator": "dis", "shard_size": 2,
           "gma": {"checkpoint": "weights/gma-sintel.pth", "iters": 12, "dtype": "float32", "tf32": False},
           "raft": {"model": "large", "weights": "C_T_SKHT_V2", "iters": 12},
           "dis": {"preset": "medium"}}


def params(**changes) -> FlowParams:
    """FlowParams from SECTION with top-level or 'gma.x' / 'dis.x' keys replaced."""
    section = json.loads(json.dumps(SECTION))
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__")
            section[outer][inner] = value
        else:
            section[key] = value
    return FlowParams.from_json(json.dumps(section), "test")


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 smooth random texture (blurred noise), rich enough for DIS."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def translating_video(num_frames: int, height: int, width: int, du: int, dv: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) frames of a texture moving by (du, dv) pixels per frame: frame t+1 (x) = frame t (x - du)."""
    margin = (num_frames + 1) * max(abs(du), abs(dv)) + 1
    big = texture(height + 2 * margin, width + 2 * margin, seed)
    return np.stack([big[margin - t * dv:margin - t * dv + height, margin - t * du:margin - t * du + width]
                     for t in range(num_frames)])


def make_dataset(root: Path, lengths: list[int], height: int = 48, width: int = 64) -> dict[int, np.ndarray]:
    """A YouTube-VIS folder with PNG frames (lossless) of translating textures; returns frames by video id."""
    videos, frames_by_id = [], {}
    for i, length in enumerate(lengths):
        vid = 10 + 3 * i  # ids not starting at 1, not contiguous
        frames = translating_video(length, height, width, du=1 + i % 3, dv=-(i % 2), seed=i)
        names = []
        for t, frame in enumerate(frames):
            name = f"v{vid}/{t:05d}.png"
            (root / "JPEGImages" / f"v{vid}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "JPEGImages" / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            names.append(name)
        videos.append({"id": vid, "width": width, "height": height, "length": length, "file_names": names})
        frames_by_id[vid] = frames
    categories = [{"id": 1, "name": "thing", "supercategory": "thing"}]
    (root / "train.json").write_text(json.dumps({"videos": videos, "annotations": [], "categories": categories}))
    return frames_by_id


def run_cli(root: Path, out: Path, shard: int, section: dict, **extra: str) -> None:
    """Run pipeline.flow.main in-process on shard `shard`, reading the manifest of root/train.json."""
    manifest = write_test_manifest(root)
    argv = ["--root", str(root), "--manifest", str(manifest), "--shard", str(shard), "--params",
            json.dumps(section), "--out", str(out), "--log-json", str(out.parent / f"shard_{shard}.json")]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", value]
    flow.main(argv)


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- params ---------------------------------------------------------------------------------------------

def test_params_from_config_yaml():
    section = yaml.safe_load((REPO / "config.yaml").read_text())["flow"]
    p = FlowParams.from_json(json.dumps(section, sort_keys=True), "config")
    assert p.as_dict() == section


def test_params_errors_name_the_field():
    with pytest.raises(ValueError, match="flow.estimator"):
        params(estimator="pwc")
    with pytest.raises(ValueError, match="flow.raft.model"):
        params(raft__model="huge")
    with pytest.raises(ValueError, match="flow.raft.iters"):
        params(raft__iters=0)
    with pytest.raises(ValueError, match="flow.dis.preset"):
        params(dis__preset="slow")
    with pytest.raises(ValueError, match="flow.gma.dtype"):
        params(gma__dtype="int8")
    with pytest.raises(ValueError, match="flow.gma.tf32: expected true or false, got 'yes'"):
        params(gma__tf32="yes")
    assert params().gma.tf32 is False and params(gma__tf32=True).as_dict()["gma"]["tf32"] is True  # recorded
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        FlowParams.from_json(json.dumps({**SECTION, "extra": 1}), "test")
    with pytest.raises(ValueError, match="flow.gma.*missing keys"):
        FlowParams.from_json(json.dumps({**SECTION, "gma": {"iters": 1, "dtype": "float32"}}), "test")


# --- estimators and per-video rules ---------------------------------------------------------------------

@pytest.mark.parametrize("du, dv", [(2, 0), (-1, 3)])
def test_dis_recovers_translation(du, dv):
    frames = translating_video(2, 64, 80, du, dv, seed=1)
    est = DisEstimator("medium")(frames[:1], frames[1:])
    assert est.shape == (1, 64, 80, 2) and est.dtype == np.float32
    interior = est[0, 8:-8, 8:-8]
    assert np.allclose(np.median(interior.reshape(-1, 2), axis=0), (du, dv), atol=0.1)
    assert np.abs(interior - (du, dv)).mean() < 0.3


def test_dis_is_deterministic():
    frames = translating_video(2, 40, 56, 1, 1, seed=2)
    dis = DisEstimator("fast")
    assert np.array_equal(dis(frames[:1], frames[1:]), dis(frames[:1], frames[1:]))


def mean_difference_estimator(frames_t: np.ndarray, frames_t1: np.ndarray) -> np.ndarray:
    """A stand-in estimator whose output identifies the pair: u = mean(second) - mean(first), v = 1."""
    diff = frames_t1.reshape(len(frames_t1), -1).mean(1) - frames_t.reshape(len(frames_t), -1).mean(1)
    out = np.ones(frames_t.shape[:3] + (2,), np.float32)
    out[..., 0] = diff[:, None, None]
    return out


def test_video_flow_last_and_single_frame_rules():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    means = frames.reshape(4, -1).mean(1)
    out = video_flow(frames, mean_difference_estimator)
    assert out.shape == (4, 5, 6, 2)
    for t in range(3):  # F(t -> t+1)
        assert np.allclose(out[t, ..., 0], np.float32(means[t + 1] - means[t]))
        assert (out[t, ..., 1] == 1).all()
    # last frame: -F(3 -> 2) = -(mean2 - mean3, 1)
    assert np.allclose(out[3, ..., 0], -np.float32(means[2] - means[3]))
    assert (out[3, ..., 1] == -1).all()
    single = video_flow(frames[:1], mean_difference_estimator)
    assert single.shape == (1, 5, 6, 2) and not single.any()


def test_video_flow_dis_last_frame_continues_motion():
    # a steady translation: the last frame's -F(t -> t-1) is the same motion as the others
    frames = translating_video(3, 64, 80, 2, 1, seed=4)
    out = video_flow(frames, DisEstimator("medium"))
    for t in range(3):
        assert np.allclose(np.median(out[t, 8:-8, 8:-8].reshape(-1, 2), axis=0), (2, 1), atol=0.15), t


def test_gma_missing_checkpoint_message(tmp_path):
    path = tmp_path / "weights" / "gma-sintel.pth"
    with pytest.raises(FileNotFoundError) as info:
        make_estimator(params(estimator="gma", gma__checkpoint=str(path)))
    message = str(info.value)
    assert str(path) in message and "flow.gma.checkpoint" in message
    assert "https://github.com/zacjiang/GMA/raw/main/checkpoints/gma-sintel.pth" in message


def random_gma_checkpoint(path: Path) -> None:
    """Save a GMA with seeded random weights, in the released files' layout (module. prefix)."""
    import torch
    from pipeline.gma import GMA
    torch.manual_seed(0)
    model = GMA()
    with torch.no_grad():
        model.update_block.aggregator.gamma.fill_(0.5)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)


def test_gma_batched_equals_one_pair_at_a_time(tmp_path):
    import torch
    torch.set_num_threads(1)
    checkpoint = tmp_path / "gma-sintel.pth"
    random_gma_checkpoint(checkpoint)
    p = params(estimator="gma", gma__checkpoint=str(checkpoint), gma__iters=2)
    frames = translating_video(2, 40, 48, 1, 0, seed=5)
    batched = make_estimator(p, "cpu", batch_size=2)
    single = GmaEstimator(batched.model, 2, "float32", batch_size=1)
    a = video_flow(frames, batched)
    b = video_flow(frames, single)
    assert a.shape == (2, 40, 48, 2) and np.isfinite(a).all()
    assert np.allclose(a, b, atol=1e-3)


# --- the shard store ------------------------------------------------------------------------------------

def test_shard_store_contents_and_attributes(tmp_path):
    root = tmp_path / "data"
    frames = make_dataset(root, lengths=[3, 1, 2, 4])  # ids 10, 13, 16, 19; shard_size 2
    out = tmp_path / "results" / "shard_1.zarr"
    run_cli(root, out, 1, SECTION, num_videos="4")
    group = open_flow_store(out, params(), videos=[16, 19])
    assert group.attrs["estimator"] == "dis" and group.attrs["videos"] == [16, 19]
    assert group.attrs["params"] == SECTION and group.attrs["checkpoint_sha256"] is None
    assert sorted(group.array_keys()) == ["16", "19"]
    dis = DisEstimator("medium")
    for vid in (16, 19):
        array = group[str(vid)]
        video = frames[vid]
        assert array.shape == video.shape and array.dtype == np.uint8
        assert array.chunks == (1,) + video.shape[1:]
        assert "zstd" in type(array.compressors[0]).__name__.lower()
        # brute force: each pair through DIS, the last one reversed and negated, each frame encoded
        expected = [flow_to_rgb(dis(video[t:t + 1], video[t + 1:t + 2])[0]) for t in range(len(video) - 1)]
        expected.append(flow_to_rgb(-dis(video[-1:], video[-2:-1])[0]))
        assert np.array_equal(array[...], np.stack(expected))
    log = json.loads((out.parent / "shard_1.json").read_text())
    assert log["frames"] == 6 and log["estimator"] == "dis" and log["frames_per_s"] > 0
    # the one-frame video sits in shard 0: white (zero flow)
    out0 = tmp_path / "results" / "shard_0.zarr"
    run_cli(root, out0, 0, SECTION)
    assert (open_flow_store(out0, params())["13"][...] == 255).all()


def test_store_settings_mismatch_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, lengths=[2])
    out = tmp_path / "shard_0.zarr"
    run_cli(root, out, 0, SECTION)
    with pytest.raises(FlowStoreMismatch, match=r"flow.dis.preset: store 'medium', expected 'fast'"):
        open_flow_store(out, params(dis__preset="fast"))
    with pytest.raises(FlowStoreMismatch, match="flow.estimator"):
        open_flow_store(out, params(estimator="gma"))
    with pytest.raises(FlowStoreMismatch, match="holds videos"):
        open_flow_store(out, params(), videos=[11])
    with pytest.raises(FileNotFoundError, match="no flow store"):
        open_flow_store(tmp_path / "shard_9.zarr", params())


def test_gma_store_records_checkpoint(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, lengths=[2], height=32, width=40)
    checkpoint = tmp_path / "gma-sintel.pth"
    random_gma_checkpoint(checkpoint)
    section = {**SECTION, "estimator": "gma", "gma": {"checkpoint": str(checkpoint), "iters": 1, "dtype": "float32"}}
    out = tmp_path / "shard_0.zarr"
    run_cli(root, out, 0, section, device="cpu", threads="1")
    sha = __import__("hashlib").sha256(checkpoint.read_bytes()).hexdigest()
    p = FlowParams.from_json(json.dumps(section), "test")
    group = open_flow_store(out, p, checkpoint_sha256=sha)
    assert group.attrs["checkpoint_sha256"] == sha == file_sha256(checkpoint)
    assert group.attrs["iters"] == 1 and group.attrs["dtype"] == "float32"
    with pytest.raises(FlowStoreMismatch, match="checkpoint sha256"):
        open_flow_store(out, p, checkpoint_sha256="0" * 64)


def test_dataset_changed_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, lengths=[2, 2])
    with pytest.raises(ValueError, match="lists 2 videos, but the workflow planned its flow shards for 3"):
        run_cli(root, tmp_path / "shard_0.zarr", 0, SECTION, num_videos="3")


def test_failed_job_leaves_nothing_and_stale_temps_are_removed(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, lengths=[2, 3])
    videos = load_ytvis(root, "train.json").videos
    out = tmp_path / "shard_0.zarr"
    calls = []

    def failing(frames_t, frames_t1):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("estimator died")
        return DisEstimator("fast")(frames_t, frames_t1)

    with pytest.raises(RuntimeError, match="estimator died"):
        write_shard(out, root, videos, failing, store_attributes(params(), [10, 13], None), progress=False)
    assert list(tmp_path.iterdir()) == [root]  # neither the store nor a temporary folder
    stale = tmp_path / ".shard_0.zarr.abc123.tmp"  # as a SIGKILLed job would leave it
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    write_shard(out, root, videos, DisEstimator("fast"), store_attributes(params(), [10, 13], None), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "shard_0.zarr"]
    assert sorted(zarr.open_group(out, mode="r").array_keys()) == ["10", "13"]


@pytest.mark.slow
def test_sigkill_and_rerun_is_byte_identical(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, lengths=[6] * 8, height=96, width=128)
    manifest = write_test_manifest(root)
    section = {**SECTION, "shard_size": 8}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "pipeline.flow", "--root", str(root), "--manifest", str(manifest),
                "--shard", "0", "--params", json.dumps(section), "--out", str(out), "--log-json",
                str(out.with_suffix(".json")), "--threads", "1"]

    reference = tmp_path / "a" / "shard_0.zarr"
    subprocess.run(command(reference), env=env, check=True, capture_output=True)
    out = tmp_path / "b" / "shard_0.zarr"
    proc = subprocess.Popen(command(out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once a video array is in the temporary store
        if any(out.parent.glob(".shard_0.zarr.*.tmp/1[0-9]/zarr.json")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "the job finished before it could be killed; make the dataset bigger"
    assert any(out.parent.glob(".shard_0.zarr.*.tmp"))  # a half-written temporary store was left
    with pytest.raises(FileNotFoundError):
        open_flow_store(out, params(shard_size=8))
    subprocess.run(command(out), env=env, check=True, capture_output=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["shard_0.json", "shard_0.zarr"]
    assert store_bytes(out) == store_bytes(reference)
    open_flow_store(out, params(shard_size=8), videos=[10 + 3 * i for i in range(8)])


# --- flow quality and the checkpoint rule ----------------------------------------------------------------

def test_endpoint_errors_against_a_loop():
    from pipeline.flow_quality import endpoint_errors
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 2, 3, 4, 2)).astype(np.float32)
    errors = endpoint_errors(a, b)
    for index in np.ndindex(2, 3, 4):
        du, dv = float(a[index][0]) - float(b[index][0]), float(a[index][1]) - float(b[index][1])
        assert errors[index] == pytest.approx((du * du + dv * dv) ** 0.5)


def test_flow_quality_on_known_translations(tmp_path):
    from pipeline import flow_quality
    root = tmp_path / "data"
    frames = make_dataset(root, lengths=[3, 2], height=64, width=80)
    (root / "flow_gt").mkdir()
    motions = {10: (1, 0), 13: (2, -1)}  # make_dataset: du = 1 + i % 3, dv = -(i % 2)
    for vid, (du, dv) in motions.items():
        truth = np.zeros((len(frames[vid]) - 1, 64, 80, 2), np.float32)
        truth[..., 0], truth[..., 1] = du, dv
        np.save(root / "flow_gt" / f"v{vid}.npy", truth)
    out = tmp_path / "quality.json"
    flow_quality.main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--gt-root", str(root),
                       "--params", json.dumps(SECTION), "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["videos"]) == {"10", "13"} and report["estimator"] == "dis"
    dis = DisEstimator("medium")
    errors = {vid: np.hypot(*(dis(f[:-1], f[1:]) - motions[vid]).transpose(3, 0, 1, 2)) for vid, f in frames.items()}
    for vid, e in errors.items():
        assert report["videos"][str(vid)]["epe"] == pytest.approx(e.mean(), rel=1e-6)
        assert report["videos"][str(vid)]["pixels"] == e.size
    every = np.concatenate([e.ravel() for e in errors.values()])
    assert report["overall"]["epe"] == pytest.approx(every.mean(), rel=1e-6)
    assert report["overall"]["outliers_3px"] == pytest.approx((every > 3).mean())
    assert report["overall"]["epe"] < 0.5  # DIS on clean translating texture


def test_gma_checkpoint_fetch(tmp_path):
    from pipeline.gma_checkpoint import CheckpointUnavailable, fetch_checkpoint, main
    source = tmp_path / "src" / "gma-sintel.pth"
    source.parent.mkdir()
    random_gma_checkpoint(source)
    dest = tmp_path / "weights" / "gma-sintel.pth"
    fetch_checkpoint(source.as_uri(), dest)
    assert dest.read_bytes() == source.read_bytes()
    broken = tmp_path / "src" / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointUnavailable, match="does not load strictly") as info:
        fetch_checkpoint(broken.as_uri(), tmp_path / "weights" / "gma-kitti.pth")
    assert str((tmp_path / "weights" / "gma-kitti.pth").resolve()) in str(info.value)
    url = "http://127.0.0.1:9/checkpoints/gma-things.pth"  # nothing listens on the discard port
    with pytest.raises(CheckpointUnavailable, match="could not download") as info:
        fetch_checkpoint(url, tmp_path / "weights" / "gma-things.pth", timeout=5)
    assert url in str(info.value) and "gma-things.pth" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["gma-sintel.pth"]  # no temporaries
    with pytest.raises(CheckpointUnavailable, match="flow.gma.checkpoint"):
        main(["--dest", str(tmp_path / "weights" / "mine.pth")])


@pytest.mark.parametrize("how", ["truncated_jpeg", "wrong_size"])
def test_damaged_frame_fails_the_job_naming_it_and_leaves_nothing(make_ytvis, tmp_path, how):
    root = make_ytvis(videos=3, frames=3)  # shard 0 of size 2: videos 101 and 108
    frame = root / "JPEGImages" / "vid001ab" / "00010.jpg"  # video 108, frame 2: after video 101 was stored
    damage_frame(frame, how)
    out = tmp_path / "flow" / "shard_0.zarr"
    with pytest.raises(ValueError) as err:
        run_cli(root, out, 0, SECTION)
    assert f"{frame}: video 108 frame 2" in str(err.value)
    assert sorted(os.listdir(out.parent)) == [] and leftovers(tmp_path) == []  # no store, no log, no temporary


# --- the ground-truth source (gt) ------------------------------------------------------------------------

def decoded_direction_radius(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded flow (..., 3) uint8 -> (direction atan2(v, u) in [0, 2 pi), normalised radius) per pixel.

    flow_codec: fk = (atan2(-v, -u) / pi + 1) / 2 * 54, and atan2(-v, -u) = atan2(v, u) - pi (mod 2 pi),
    so atan2(v, u) = 2 pi fk / 54 (mod 2 pi)."""
    from pipeline.flow_codec import NUM_COLS, rgb_to_hue_radius
    fk, radius = rgb_to_hue_radius(rgb)
    return np.mod(2 * np.pi * fk / (NUM_COLS - 1), 2 * np.pi), radius


def test_gt_store_decodes_to_the_ground_truth(tmp_path):
    """Rule flow with estimator gt on a synthetic dataset: every stored frame decodes to the ground truth's
    direction and relative magnitude within the codec's quantisation.

    Tolerances from the codec's arithmetic (pipeline/flow_codec.py). The smallest channel is
    floor(255 (1 - r)), r = |F| / (max |F| + 1e-5), and the decoder takes the centre of its interval:
    |r' - r| <= 0.5 / 255. The ramping channel is floor(255 (1 - r (1 - w))), w the wheel value in [0, 1]:
    w is known to (0.5 / 255 + 0.5 / 255) / r = 1 / (255 r), and the wheel ramps by at least 17 / 255 per
    hue step (the 15-step red-yellow segment), so the hue index fk is off by at most 15 / (255 r) steps,
    i.e. the direction by 2 pi / 54 * 15 / (255 r) = 0.00684 / r rad."""
    from pipeline.synthetic import SyntheticParams, write_dataset
    root = tmp_path / "synthetic"
    write_dataset(SyntheticParams(videos=3, frames=3, height=64, width=96, classes=2, max_objects=2,
                                  camouflage_prob=0.5, seed=3), root)
    section = {**SECTION, "estimator": "gt", "shard_size": 3}
    out = tmp_path / "results" / "shard_0.zarr"
    run_cli(root, out, 0, section)
    group = open_flow_store(out, params(estimator="gt", shard_size=3), videos=[1, 2, 3])
    assert group.attrs["estimator"] == "gt" and group.attrs["iters"] is None
    checked = 0
    for video in load_ytvis(root, "train.json").videos:
        truth = np.load(root / "flow_gt" / f"video_{video.id:05d}.npy")  # (T-1, H, W, 2)
        truth = np.concatenate([truth, truth[-1:]])  # the last frame stores F(T-2 -> T-1)
        stored = group[str(video.id)][...]
        assert stored.shape == (video.length, video.height, video.width, 3)
        for t in range(video.length):
            u, v = truth[t, ..., 0].astype(np.float64), truth[t, ..., 1].astype(np.float64)
            magnitude = np.hypot(u, v)
            radius = magnitude / (magnitude.max() + 1e-5)
            direction, decoded_radius = decoded_direction_radius(stored[t])
            assert np.abs(decoded_radius - radius).max() <= 0.5 / 255 + 1e-6
            moving = radius >= 0.05
            error = np.abs(np.angle(np.exp(1j * (direction - np.arctan2(v, u)))))[moving]  # wrapped to [0, pi]
            assert (error <= 2 * np.pi / 54 * 15 / (255 * radius[moving]) + 1e-6).all(), error.max()
            checked += int(moving.sum())
    assert checked > 10_000


def test_gt_without_ground_truth_is_an_error(tmp_path):
    """A real YouTube-VIS root (no flow_gt/) with estimator gt: the CLI and the workflow both refuse."""
    root = tmp_path / "data"
    make_dataset(root, lengths=[2])
    out = tmp_path / "results" / "shard_0.zarr"
    with pytest.raises(FileNotFoundError, match=r"flow_gt does not exist; only the synthetic dataset"):
        run_cli(root, out, 0, {**SECTION, "estimator": "gt"})
    assert not out.exists()
    with pytest.raises(ValueError, match=r"flow.estimator gt .*new footage has none"):
        make_estimator(params(estimator="gt"))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--config", "dataset=" + json.dumps({"root": str(root)}),
                          'flow={"estimator": "gt"}'],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "flow.estimator: gt" in run.stderr + run.stdout, run.stderr[-2000:]


def test_flow_quality_of_gt_is_zero(tmp_path):
    from pipeline import flow_quality
    from pipeline.synthetic import SyntheticParams, write_dataset
    root = tmp_path / "synthetic"
    write_dataset(SyntheticParams(videos=2, frames=2, height=32, width=32, classes=1, max_objects=1,
                                  camouflage_prob=0.5, seed=0), root)
    out = tmp_path / "quality.json"
    flow_quality.main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--gt-root", str(root),
                       "--params", json.dumps({**SECTION, "estimator": "gt"}), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["estimator"] == "gt" and report["overall"] == {"epe": 0.0, "outliers_3px": 0.0, "pixels": 2 * 32 * 32}


# --- torchvision's RAFT ------------------------------------------------------------------------------------

def random_raft_small():
    """torchvision's raft_small with seeded random weights."""
    import torch
    from torchvision.models.optical_flow import raft_small
    torch.manual_seed(0)
    return raft_small(weights=None, progress=False)


def test_raft_inputs_match_torchvision_transforms():
    """Our normalisation is the RAFT weights' own transforms; on sides that need no padding the estimator
    returns what the torchvision model returns on the transformed frames."""
    import torch
    from torchvision.models.optical_flow import Raft_Small_Weights
    from pipeline.flow import RaftEstimator, raft_inputs
    torch.set_num_threads(1)
    frames = translating_video(3, 128, 136, 2, 1, seed=4)
    t1, t2 = (torch.as_tensor(f).permute(0, 3, 1, 2) for f in (frames[:2], frames[1:]))
    ref1, ref2 = Raft_Small_Weights.C_T_V2.transforms()(t1, t2)
    assert torch.allclose(raft_inputs(frames[:2], "cpu"), ref1, atol=1e-6)
    model = random_raft_small().eval()
    estimator = RaftEstimator(model, iters=2, batch_size=1)
    assert estimator.min_size == 128  # 8 * 2^4 correlation levels: the coarsest level 2x2
    with torch.inference_mode():
        expected = model(ref1, ref2, num_flow_updates=2)[-1].permute(0, 2, 3, 1).numpy()
    assert np.allclose(estimator(frames[:2], frames[1:]), expected, atol=1e-4)


def test_raft_random_weights_through_write_shard(tmp_path):
    """Sides that are not multiples of 8 (padded, cropped back), one-frame videos, batches of 2 pairs."""
    import torch
    from pipeline.flow import RaftEstimator
    torch.set_num_threads(1)
    root = tmp_path / "data"
    frames = make_dataset(root, lengths=[3, 1, 2], height=44, width=60)
    videos = load_ytvis(root, "train.json").videos
    estimator = RaftEstimator(random_raft_small(), iters=2, batch_size=2)
    section = {**SECTION, "estimator": "raft", "shard_size": 3, "raft": {"model": "small", "weights": "C_T_V2",
                                                                        "iters": 2}}
    attributes = store_attributes(FlowParams.from_json(json.dumps(section), "test"), [v.id for v in videos], None)
    out = tmp_path / "shard_0.zarr"
    write_shard(out, root, videos, estimator, attributes, progress=False)
    group = open_flow_store(out, FlowParams.from_json(json.dumps(section), "test"), videos=[10, 13, 16])
    assert group.attrs["iters"] == 2
    for vid, video in frames.items():
        stored = group[str(vid)][...]
        assert stored.shape == video.shape and stored.dtype == np.uint8
        flows = video_flow(video, estimator)
        assert np.array_equal(stored, flow.encode_video(flows))
        single = RaftEstimator(estimator.model, iters=2, batch_size=1)  # batching changes only rounding
        assert np.allclose(flows, video_flow(video, single), atol=1e-4)
    assert (group["13"][...] == 255).all()


def test_raft_weights_local_file_and_offline_message(tmp_path, monkeypatch):
    import torch
    from torchvision.models.optical_flow import Raft_Large_Weights
    from pipeline.flow import RaftParams, load_raft, raft_cache_path
    path = tmp_path / "raft_small.pth"
    reference = random_raft_small()
    torch.save(reference.state_dict(), path)
    loaded = load_raft(RaftParams("small", str(path), 2), "cpu")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit raft_large"):
        load_raft(RaftParams("large", str(path), 2), "cpu")
    with pytest.raises(FileNotFoundError, match="neither a file nor a torchvision weights name of raft_small"):
        load_raft(RaftParams("small", str(tmp_path / "absent.pth"), 2), "cpu")

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(type(Raft_Large_Weights.C_T_SKHT_V2), "get_state_dict", offline)
    with pytest.raises(FileNotFoundError) as info:
        make_estimator(params(estimator="raft"), "cpu")
    cache = raft_cache_path("large", "C_T_SKHT_V2")
    assert cache.name == "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    assert str(cache) in str(info.value) and "flow.raft.weights" in str(info.value)


def test_pooled_job_writes_the_single_threaded_store_byte_for_byte(tmp_path):
    """write_shard with a pool of 3 encoding threads writes what it writes with 1: the same decoded arrays (both
    equal to a plain loop of flow_to_rgb over DIS's flow), per-frame scales and content digest, which is the
    digest of the files (pipeline.identity)."""
    root = tmp_path / "data"
    frames = make_dataset(root, lengths=[5, 1, 4])
    videos = load_ytvis(root, "train.json").videos
    attrs = store_attributes(params(shard_size=3), [v.id for v in videos], None)
    outs = {n: tmp_path / f"threads_{n}" / "shard_0.zarr" for n in (1, 3)}
    for n, out in outs.items():
        write_shard(out, root, videos, DisEstimator("fast"), attrs, progress=False, threads=n)
    one, pooled = (zarr.open_group(outs[n], mode="r") for n in (1, 3))
    assert one.attrs[DIGEST_ATTR] == pooled.attrs[DIGEST_ATTR] == store_digest(outs[3]) == store_digest(outs[1])
    for video in videos:
        flows = video_flow(frames[video.id], DisEstimator("fast"))
        expected = np.stack([flow_to_rgb(f) for f in flows])
        np.testing.assert_array_equal(one[str(video.id)][...], expected)
        np.testing.assert_array_equal(pooled[str(video.id)][...], expected)
        assert one[str(video.id)].attrs["scale"] == pooled[str(video.id)].attrs["scale"]
        max_radius = [np.sqrt((f.astype(np.float64) ** 2).sum(-1)).max() + 1e-5 for f in flows]  # (T,)
        np.testing.assert_allclose(pooled[str(video.id)].attrs["scale"], max_radius, rtol=1e-6)


def test_sharded_video_reads_back_as_the_one_file_per_frame_layout(tmp_path):
    """The same encoded flow written by write_video (one shard per video, store format 2) and in format 1's layout
    (one chunk file per frame, written here with zarr directly) reads back identical frame by frame through
    stored_frame; each frame's compressed bytes inside the shard are that frame's chunk file; 2 files, not T + 1."""
    rng = np.random.default_rng(0)
    rgb = flow.encode_video(rng.normal(0, 3, (6, 40, 56, 2)).astype(np.float32))  # (T, H, W, 3)
    sharded = zarr.open_group(tmp_path / "sharded.zarr", mode="w", zarr_format=3)
    flow.write_video(sharded, 7, rgb)
    per_frame = zarr.open_group(tmp_path / "per_frame.zarr", mode="w", zarr_format=3)
    per_frame.create_array("7", shape=rgb.shape, dtype="uint8", chunks=(1,) + rgb.shape[1:], fill_value=0,
                           compressors=zarr.codecs.ZstdCodec(level=flow.ZSTD_LEVEL))[...] = rgb
    for t in range(len(rgb)):
        frames = [stored_frame(group["7"], t, f"{name}: video 7 flow", "flow")
                  for name, group in (("sharded", sharded), ("per_frame", per_frame))]
        np.testing.assert_array_equal(frames[0], rgb[t])
        np.testing.assert_array_equal(frames[1], rgb[t])
    shard, data, table = read_one_shard(tmp_path / "sharded.zarr" / "7")
    for t, (offset, nbytes) in enumerate(table):
        assert bytes(data[offset:offset + nbytes]) == (tmp_path / "per_frame.zarr" / "7" / "c" / str(t) / "0" / "0"
                                                       / "0").read_bytes()
    files = {name: sorted(p for p in (tmp_path / name / "7").rglob("*") if p.is_file())
             for name in ("sharded.zarr", "per_frame.zarr")}
    assert len(files["sharded.zarr"]) == 2 and len(files["per_frame.zarr"]) == len(rgb) + 1


@pytest.mark.parametrize("keep", ["half", "10 bytes"])
def test_truncated_shard_is_an_error_naming_store_video_and_frame(tmp_path, keep):
    """A video's shard cut short (a full disk, a killed copy) fails the shard index's CRC32C: every frame of
    the video is an error naming the store, the video, the frame and the shard, never zeros."""
    root = tmp_path / "data"
    make_dataset(root, lengths=[2, 3])
    out = tmp_path / "shard_0.zarr"
    write_shard(out, root, load_ytvis(root, "train.json").videos, DisEstimator("fast"),
                store_attributes(params(), [10, 13], None), progress=False)
    shard = out / "13" / "c" / "0" / "0" / "0" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2] if keep == "half" else data[:10])
    array = open_flow_store(out, params(), [10, 13])["13"]
    for t in range(3):
        with pytest.raises(CorruptStore, match=f"{out}: video 13 flow: frame {t}: chunk 13/c/0/0/0/0 cannot be "
                                               f"decoded .*rerun rule flow"):
            stored_frame(array, t, f"{out}: video 13 flow", "flow")
