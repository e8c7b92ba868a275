"""Input identity (pipeline/identity.py): the content digests the flow, affinity and index jobs store, stable
across reruns and changed by any stored byte; outputs of older code (no digest) identified by their bytes."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import h5py
import pytest
import zarr

from pipeline import affinity, flow, index
from pipeline.identity import (DIGEST_ATTR, STORE_METADATA, digest_parts, h5_digest, index_identity,
                               input_identity, store_digest, store_identity)
from pipeline.synthetic import SyntheticParams, write_dataset

from manifests import write_test_manifest

FLOW = {"estimator": "dis", "shard_size": 2, "gma": {"checkpoint": "absent.pth", "iters": 1, "dtype": "float32"},
        "raft": {"model": "small", "weights": "C_T_V2", "iters": 2},
        "dis": {"preset": "ultrafast"}}
AFFINITY = {"theta_color": 2.0, "tau_color": 0.3, "theta_flow": 0.5, "tau_flow": 0.6, "bottom_rows": 4}


def run_jobs(root: Path, out: Path, shards: int = 2) -> Path:
    """The flow and affinity jobs of every shard and the frame index job, as the rules run them, into `out`."""
    manifest = str(write_test_manifest(root))
    for k in range(shards):
        flow.main(["--root", str(root), "--manifest", manifest, "--shard", str(k), "--params",
                   json.dumps(FLOW), "--out", str(out / f"flow/shard_{k}.zarr"), "--log-json", str(out / "f.json")])
        affinity.main(["--root", str(root), "--manifest", manifest, "--shard", str(k), "--flow",
                       str(out / f"flow/shard_{k}.zarr"), "--params", json.dumps(AFFINITY), "--out",
                       str(out / f"affinity/shard_{k}.zarr")])
    index.main(["--root", str(root), "--manifest", manifest, "--split", str(root / "train.json"),
                "--shard-size", str(FLOW["shard_size"]), "--out", str(out / "index.h5")])
    return out


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs of the same jobs on the same synthetic 4-video dataset (2 shards), in separate folders."""
    base = tmp_path_factory.mktemp("identity")
    write_dataset(SyntheticParams(videos=4, frames=3, height=32, width=40, classes=2, max_objects=2,
                                  camouflage_prob=0.5, seed=0), base / "data")
    return run_jobs(base / "data", base / "a"), run_jobs(base / "data", base / "b")


def attrs(store: Path) -> dict:
    """The root attributes of a Zarr store."""
    return dict(zarr.open_group(str(store), mode="r").attrs)


def flip_byte(path: Path, position: int = -1) -> None:
    """Change one byte of a file in place."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_parts_are_framed() -> None:
    """Moving bytes between a part's name and data, or between parts, changes the digest; the empty digest
    is sha256 of nothing."""
    assert digest_parts([]) == hashlib.sha256().hexdigest()
    assert digest_parts([("ab", b"c")]) != digest_parts([("a", b"bc")])
    assert digest_parts([("a", b"b"), ("c", b"")]) != digest_parts([("a", b""), ("bc", b"")])
    assert digest_parts([("a", b"x"), ("b", b"y")]) != digest_parts([("b", b"y"), ("a", b"x")])


def test_stored_digests_are_stable_across_reruns(twice: tuple[Path, Path]) -> None:
    """Each written digest is the digest of what is on disk, and the rerun writes the same ones."""
    a, b = twice
    for name in ("flow/shard_0.zarr", "flow/shard_1.zarr", "affinity/shard_0.zarr", "affinity/shard_1.zarr"):
        assert attrs(a / name)[DIGEST_ATTR] == store_digest(a / name) == attrs(b / name)[DIGEST_ATTR], name
    # the affinity store records the flow store it was made from, digest included
    assert attrs(a / "affinity/shard_1.zarr")["flow_store"] == attrs(a / "flow/shard_1.zarr")
    with h5py.File(a / "index.h5") as fa, h5py.File(b / "index.h5") as fb:
        assert fa.attrs[DIGEST_ATTR] == h5_digest(fa) == fb.attrs[DIGEST_ATTR]
    assert input_identity(a / "index.h5", a / "flow", a / "affinity") == \
        input_identity(b / "index.h5", b / "flow", b / "affinity")


@pytest.mark.parametrize("kind", ["flow", "affinity"])
def test_any_changed_store_file_changes_the_digest(twice: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    """Every chunk and metadata file below the root counts (one byte flipped in each in turn); the root
    zarr.json, which holds the attributes, does not."""
    import shutil
    store = tmp_path / "shard_0.zarr"
    shutil.copytree(twice[0] / kind / "shard_0.zarr", store)
    original = store_digest(store)
    files = [p for p in sorted(store.rglob("*")) if p.is_file() and p != store / STORE_METADATA]
    assert len(files) >= 4 and any(p.name == STORE_METADATA for p in files)  # chunks and array metadata
    for path in files:
        saved = path.read_bytes()
        flip_byte(path, len(saved) // 2)
        assert store_digest(store) != original, path.relative_to(store)
        path.write_bytes(saved)
    assert store_digest(store) == original
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["note"] = "attributes are not content"
    assert store_digest(store) == original


def test_changed_index_values_change_the_digest(twice: tuple[Path, Path], tmp_path: Path) -> None:
    """A number, a string and a box of the index each change its digest."""
    import shutil
    path = tmp_path / "index.h5"
    for dataset, edit in (("frame_index", lambda v: v + 1), ("boxes_xywh", lambda v: v * 1.5),
                          ("file_name", lambda v: [s.decode()[::-1] for s in v])):
        shutil.copy(twice[0] / "index.h5", path)
        with h5py.File(path, "r+") as f:
            stored = f.attrs[DIGEST_ATTR]
            assert h5_digest(f) == stored
            f[dataset][...] = edit(f[dataset][()])
            assert h5_digest(f) != stored, dataset


def test_outputs_without_a_digest_are_identified_by_their_bytes(twice: tuple[Path, Path], tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Stripping the digest attribute (as older code wrote them) keeps the identity, with a warning naming the
    file and the rule to rerun; the same store with one changed chunk then has another identity."""
    import shutil
    a = twice[0]
    legacy = tmp_path / "legacy"
    for name in ("flow", "affinity"):
        shutil.copytree(a / name, legacy / name)
    shutil.copy(a / "index.h5", legacy / "index.h5")
    store = legacy / "affinity/shard_1.zarr"
    zarr.open_group(str(store), mode="r+").attrs.__delitem__(DIGEST_ATTR)
    with h5py.File(legacy / "index.h5", "r+") as f:
        del f.attrs[DIGEST_ATTR]
    assert DIGEST_ATTR not in attrs(store)
    with caplog.at_level(logging.WARNING, logger="mowis.identity"):
        assert input_identity(legacy / "index.h5", legacy / "flow", legacy / "affinity") == \
            input_identity(a / "index.h5", a / "flow", a / "affinity")
    assert f"{store}: no {DIGEST_ATTR} attribute" in caplog.text and "rerun rule affinity" in caplog.text
    assert "rerun rule frame_index" in caplog.text
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name != STORE_METADATA)
    flip_byte(chunk)
    assert store_identity(store, "affinity") != store_identity(a / "affinity/shard_1.zarr", "affinity")
    assert index_identity(legacy / "index.h5") == index_identity(a / "index.h5")


def test_input_identity_names_the_shards_of_the_index(twice: tuple[Path, Path], tmp_path: Path) -> None:
    """One entry per store the index reads; a missing store is an error naming it and its rule."""
    a = twice[0]
    identity = input_identity(a / "index.h5", a / "flow", a / "affinity")
    assert list(identity) == ["index", "flow/shard_0.zarr", "flow/shard_1.zarr", "affinity/shard_0.zarr",
                              "affinity/shard_1.zarr"]
    assert identity["flow/shard_1.zarr"] == attrs(a / "flow/shard_1.zarr")
    with pytest.raises(FileNotFoundError, match=r"missing/shard_0.zarr: no store here.*rerun rule flow"):
        input_identity(a / "index.h5", tmp_path / "missing", a / "affinity")
    broken = tmp_path / "index.h5"
    with h5py.File(broken, "w") as f:
        f["video_id"] = [1]
    with pytest.raises(KeyError, match=r"index.h5: no 'shard' dataset.*rerun rule frame_index"):
        input_identity(broken, a / "flow", a / "affinity")
