"""Which videos a flow/affinity shard holds: videos sorted by id, `shard_size` consecutive ones each."""

from __future__ import annotations

import math
from collections.abc import Sequence


def num_shards(num_videos: int, shard_size: int) -> int:
    """Number of shards covering `num_videos` videos."""
    return math.ceil(num_videos / shard_size)


def videos_of_shard(video_ids: Sequence[int], shard: int, shard_size: int) -> list[int]:
    """Video ids of shard `shard`: positions [shard*S, (shard+1)*S) of the ids sorted ascending."""
    ordered = sorted(video_ids)
    n = num_shards(len(ordered), shard_size)
    if not 0 <= shard < n:
        raise ValueError(f"shard {shard} does not exist: {len(ordered)} videos in shards of {shard_size} "
                         f"make shards 0..{n - 1}")
    return ordered[shard * shard_size:(shard + 1) * shard_size]


def shard_of_video(video_ids: Sequence[int], video_id: int, shard_size: int) -> int:
    """The shard holding `video_id`."""
    ordered = sorted(video_ids)
    return ordered.index(video_id) // shard_size
