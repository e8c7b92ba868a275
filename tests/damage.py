"""Damaged inputs for the bad-input tests: frame files, Zarr chunks and shards, store attributes, changed in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import cv2
import google_crc32c
import numpy as np
import zarr


FrameDamage = Literal["truncated_jpeg", "wrong_size"]
ChunkDamage = Literal["missing_chunk", "corrupt_chunk"]


def damage_frame(path: Path, how: FrameDamage) -> None:
    """Replace a frame file by its JPEG encoding cut in the middle of the image data (cv2.imread still decodes that,
    with a "Premature end of JPEG file" warning and grey rows) or by an image four rows taller, in its own format."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if how == "truncated_jpeg":
        data = cv2.imencode(".jpg", image)[1].tobytes()
        scan = data.index(b"\xff\xda")  # start of the image data: keep the headers and half of the data
        path.write_bytes(data[:(scan + len(data)) // 2])
        assert cv2.imread(str(path), cv2.IMREAD_COLOR) is not None, "cv2.imread accepts a truncated JPEG"
    else:
        cv2.imwrite(str(path), np.pad(image, ((0, 4), (0, 0), (0, 0)), mode="edge"))


def damage_chunk(chunk: Path, how: ChunkDamage) -> None:
    """Delete a stored Zarr chunk (or shard) file, or overwrite it with bytes that no codec decodes."""
    assert chunk.is_file(), f"{chunk}: no such chunk"
    if how == "missing_chunk":
        chunk.unlink()
    else:
        chunk.write_bytes(b"not a zstd frame" * 8)


def read_one_shard(array_dir: Path) -> tuple[Path, bytearray, np.ndarray]:
    """The shard file of a Zarr v3 array stored as one shard (as this project's stores hold a video), its bytes,
    and its index (at its end: one (offset, nbytes) little-endian uint64 pair per inner chunk, then a CRC32C),
    as a (chunks, 2) array."""
    array = zarr.open_array(str(array_dir), mode="r", zarr_format=3)
    assert array.shards == array.shape, f"{array_dir}: not one shard per array"
    chunks = int(np.prod([s // c for s, c in zip(array.shape, array.chunks)]))
    shard = array_dir / "c" / "/".join("0" * array.ndim)
    data = bytearray(shard.read_bytes())
    return shard, data, np.frombuffer(bytes(data[-(16 * chunks + 4):-4]), "<u8").reshape(chunks, 2).copy()


def corrupt_shard_chunk(array_dir: Path, index: int) -> Path:
    """Overwrite the bytes of inner chunk `index` (one frame) of a one-shard array with bytes no codec decodes;
    the shard's index stays valid, so only that frame fails to decode. Returns the shard file."""
    shard, data, table = read_one_shard(array_dir)
    offset, nbytes = (int(x) for x in table[index])
    assert nbytes > 0, f"{shard}: inner chunk {index} is empty"
    data[offset:offset + nbytes] = (b"not a zstd frame" * (nbytes // 16 + 1))[:nbytes]
    shard.write_bytes(bytes(data))
    return shard


def drop_shard_chunk(array_dir: Path, index: int) -> Path:
    """Mark inner chunk `index` (one frame) of a one-shard array absent in the shard's index, with a valid CRC32C
    (zarr would then read that frame as the fill value). Returns the shard file."""
    shard, data, table = read_one_shard(array_dir)
    table[index] = 2**64 - 1
    index_bytes = table.astype("<u8").tobytes()
    data[-(len(index_bytes) + 4):] = index_bytes + google_crc32c.value(index_bytes).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    return shard


def set_store_attribute(store: Path, keys: tuple[str, ...], value) -> None:
    """Set the nested group attribute store.attrs[keys[0]][keys[1]]... of a Zarr v3 store to `value`."""
    group = zarr.open_group(str(store), mode="r+", zarr_format=3)
    top = json.loads(json.dumps(group.attrs[keys[0]])) if len(keys) > 1 else value
    inner = top
    for key in keys[1:-1]:
        inner = inner[key]
    if len(keys) > 1:
        inner[keys[-1]] = value
    group.attrs[keys[0]] = top


def leftovers(folder: Path) -> list[str]:
    """Names under `folder` (recursively) that look like temporary files or folders of pipeline.io's writers."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp")) if folder.exists() else []
