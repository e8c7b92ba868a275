"""Reading the shard stores (Zarr v3) one frame at a time: a missing or undecodable chunk is an error, never zeros.

Zarr returns an array's fill value for a chunk that is not in the store (zarr 3.1's config has no setting to
make that an error: its `array` options are order, write_empty_chunks and target_shard_size_bytes), so
`stored_frame` first checks that the frame is stored, then decodes it, and names the store, the video, the
frame and the rule to rerun. For an unsharded array the check is that the chunk file exists; for a sharded
one (both stages write one shard per video, chunks of one frame inside) it reads the shard's index (at the
end of the file: one (offset, nbytes) uint64 pair per inner chunk, then a CRC32C that zarr checks on
decoding) and requires the frame's entry to be present, so a frame that an edited index marks absent is an
error too. A cut or altered shard fails the CRC, a damaged inner chunk fails Zstd: decode errors.
"""

from __future__ import annotations

import numpy as np
import zarr
from zarr.abc.store import SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

ABSENT = 2**64 - 1  # offset and nbytes of an inner chunk that a shard index marks absent
INDEX_ENTRY, INDEX_CHECKSUM = 16, 4  # bytes per inner chunk in a shard index (two uint64), its CRC32C


class CorruptStore(ValueError):
    """A store chunk that is missing or cannot be decoded; the message names store, video and frame."""


def frame_is_stored(array: zarr.Array, key: str, t: int) -> bool:
    """Whether the stored object `key` holding frame t of `array` exists and, for a shard (index at its end, the
    default index codecs), whether its index holds frame t's inner chunk. A shard too short for its index
    counts as stored: decoding it then fails the checksum."""
    if array.shards is None:
        return sync(array.store.exists(key))
    per_shard = array.shards[0] // array.chunks[0]  # inner chunks per shard, each whole frames
    size = INDEX_ENTRY * per_shard + INDEX_CHECKSUM
    tail = sync(array.store.get(key, prototype=default_buffer_prototype(), byte_range=SuffixByteRequest(size)))
    if tail is None:
        return False
    data = tail.to_bytes()
    if len(data) < size:
        return True
    entries = np.frombuffer(data[:-INDEX_CHECKSUM], "<u8").reshape(per_shard, 2)  # (inner chunks, offset/nbytes)
    return not (entries[(t % array.shards[0]) // array.chunks[0]] == ABSENT).all()


def stored_frame(array: zarr.Array, t: int, where: str, rule: str) -> np.ndarray:
    """Frame t of a store array (T, ...) whose chunks hold whole frames, as both stores' do (one shard per video
    or one file per chunk). `where` (e.g. "results/flow/shard_0.zarr: video 7 flow") and the `rule` that writes
    the store go into the errors. The presence check costs about 0.5 ms (zarr's store calls through its event
    loop)."""
    if not 0 <= t < array.shape[0]:
        raise IndexError(f"{where}: frame {t} is outside the stored {array.shape[0]} frames; rerun rule {rule}")
    stored_shape = array.shards or array.chunks  # (T', ...): what one stored object holds
    key = array.metadata.encode_chunk_key((t // stored_shape[0],) + (0,) * (array.ndim - 1))
    if not frame_is_stored(array, f"{array.path}/{key}", t):
        raise CorruptStore(f"{where}: frame {t}: chunk {array.path}/{key} is missing from the store (zarr "
                           f"would read it as zeros); delete the store and rerun rule {rule}")
    try:
        return np.asarray(array[t])
    except (RuntimeError, ValueError, OSError) as e:  # codec errors: zstd RuntimeError, checksum ValueError
        raise CorruptStore(f"{where}: frame {t}: chunk {array.path}/{key} cannot be decoded ({e}); delete "
                           f"the store and rerun rule {rule}") from None
