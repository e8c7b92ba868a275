"""Input identity: the content digest a stage stores in its output's attributes as it writes it, and the
identity of the trainer's inputs (frame index, flow and affinity stores) read back from those attributes.

The digest is a sha256 over named byte strings: for a Zarr store every file under its folder but the root
`zarr.json` (which holds the attributes, the digest among them), by relative path; for the h5 frame index
every dataset's name, dtype, shape and values. A rerun of a deterministic job gives the same digest; any
changed stored byte gives another. Outputs of older code have no digest attribute: their identity computes
it from the files (with a warning), so they match only what holds the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

DIGEST_ATTR = "content_sha256"
STORE_METADATA = "zarr.json"  # a Zarr v3 store's root metadata: its attributes, not digested

log = logging.getLogger("mowis.identity")


def digest_parts(parts: Iterable[tuple[str, bytes]]) -> str:
    """Hex sha256 over (name, bytes) pairs in order, each part framed by the lengths of its name and bytes."""
    digest = hashlib.sha256()
    for name, data in parts:
        key = name.encode()
        for piece in (key, data):
            digest.update(len(piece).to_bytes(8, "little"))
            digest.update(piece)
    return digest.hexdigest()


def store_digest(store: str | os.PathLike) -> str:
    """Digest of a Zarr store folder: every file but the root zarr.json, by relative path, in path order."""
    store = Path(store)
    names = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    return digest_parts((name, (store / name).read_bytes()) for name in names if name != STORE_METADATA)


def h5_digest(file: h5py.File) -> str:
    """Digest of every dataset of an open h5 file: path, dtype, shape and values (strings as UTF-8 JSON)."""
    names: list[str] = []
    file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)

    def part(name: str) -> tuple[str, bytes]:
        dataset = file[name]
        if h5py.check_string_dtype(dataset.dtype):
            data = json.dumps(dataset.asstr()[()].tolist()).encode()
        else:
            data = np.ascontiguousarray(dataset[()]).tobytes()
        return f"{name} {dataset.dtype.str} {dataset.shape}", data

    return digest_parts(part(name) for name in sorted(names))


def _plain(value: Any) -> Any:
    """An h5 attribute value as a JSON type (numpy scalars and arrays to Python ones)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def index_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The frame index's attributes (its params and content digest); the digest is computed when absent."""
    with h5py.File(path, "r") as f:
        attrs = {name: _plain(value) for name, value in f.attrs.items()}
        if DIGEST_ATTR not in attrs:
            log.warning("%s: no %s attribute (written by older code); hashing its datasets instead, rerun rule "
                        "frame_index to store it", path, DIGEST_ATTR)
            attrs[DIGEST_ATTR] = h5_digest(f)
    return attrs


def store_identity(path: str | os.PathLike, rule: str) -> dict[str, Any]:
    """A Zarr store's attributes (params and content digest; the digest is computed when absent). `rule`
    names the rule that writes the store, for the error and warning messages."""
    path = Path(path)
    if not (path / STORE_METADATA).is_file():
        raise FileNotFoundError(f"{path}: no store here, but the frame index reads it; rerun rule {rule}")
    attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    if DIGEST_ATTR not in attrs:
        log.warning("%s: no %s attribute (written by older code); hashing its files instead, rerun rule %s to "
                    "store it", path, DIGEST_ATTR, rule)
        attrs[DIGEST_ATTR] = store_digest(path)
    return attrs


def input_identity(index: str | os.PathLike, flow_dir: str | os.PathLike,
                   affinity_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{'index': …, 'flow/shard_k.zarr': …, 'affinity/shard_k.zarr': …}: the identities of the frame index
    and of the flow and affinity stores of every shard it names (what the trainer reads)."""
    with h5py.File(index, "r") as f:
        if "shard" not in f:
            raise KeyError(f"{index}: no 'shard' dataset (datasets {sorted(f)}); rerun rule frame_index")
        shards = sorted(int(s) for s in np.unique(f["shard"][()]))
    identity = {"index": index_identity(index)}
    for kind, folder in (("flow", Path(flow_dir)), ("affinity", Path(affinity_dir))):
        for shard in shards:
            identity[f"{kind}/shard_{shard}.zarr"] = store_identity(folder / f"shard_{shard}.zarr", kind)
    return identity
