"""Reading the shard stores (Zarr v3) one frame at a time: a missing or undecodable chunk is an error, never zeros.

Zarr returns an array's fill value for a chunk that is not in the store (zarr 3.1's config has no setting to
make that an error: its `array` options are order, write_empty_chunks and target_shard_size_bytes), so
`stored_frame` first checks that the stored object holding the frame exists (the chunk, or the shard for a
sharded array), then decodes it, and names the store, the video, the frame and the rule to rerun. Inside a
shard, the chunk index ends in a CRC32C that zarr checks, so a cut or altered shard is a decode error; an
inner chunk that a valid index marks absent still reads as the fill value (the affinity writer stores every
chunk, so only a deliberately edited index could do that).
"""

from __future__ import annotations

import numpy as np
import zarr
from zarr.core.sync import sync


class CorruptStore(ValueError):
    """A store chunk that is missing or cannot be decoded; the message names store, video and frame."""


def stored_frame(array: zarr.Array, t: int, where: str, rule: str) -> np.ndarray:
    """Frame t of a store array (T, ...) whose chunks (or shards) hold whole frames, as both stores' do. `where`
    (e.g. "results/flow/shard_0.zarr: video 7 flow") and the `rule` that writes the store go into the errors.
    The presence check costs about 0.5 ms (zarr's store.exists through its event loop)."""
    if not 0 <= t < array.shape[0]:
        raise IndexError(f"{where}: frame {t} is outside the stored {array.shape[0]} frames; rerun rule {rule}")
    stored_shape = array.shards or array.chunks  # (T', ...): what one stored object holds
    key = array.metadata.encode_chunk_key((t // stored_shape[0],) + (0,) * (array.ndim - 1))
    if not sync(array.store.exists(f"{array.path}/{key}")):
        raise CorruptStore(f"{where}: frame {t}: chunk {array.path}/{key} is missing from the store (zarr would "
                           f"read it as zeros); delete the store and rerun rule {rule}")
    try:
        return np.asarray(array[t])
    except (RuntimeError, ValueError, OSError) as e:  # codec errors: zstd RuntimeError, checksum ValueError
        raise CorruptStore(f"{where}: frame {t}: chunk {array.path}/{key} cannot be decoded ({e}); delete the "
                           f"store and rerun rule {rule}") from None
