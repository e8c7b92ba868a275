"""The trainer's per-split frame index (docs/design.md, "Stores"): one row per frame, ragged boxes by offsets.

`results/index/{split}.h5` holds, for F frames and B boxes in total:
- `video_id` int64 (F,), `frame_index` int32 (F,) (position in the video's `file_names`), `file_name` str (F,)
  (relative to `<root>/JPEGImages`), `shard` int32 (F,) (the flow/affinity shard of the video), `height`,
  `width` int32 (F,) (the video's frame size);
- `box_offsets` int64 (F + 1,): the boxes of frame i are rows box_offsets[i]:box_offsets[i + 1] of
  `boxes_xywh` float32 (B, 4) (XYWH pixels as in the json), `box_category_ids` int64 (B,) and
  `box_track_ids` int64 (B,) (annotation ids);
- `category_ids` int64 (K,) and `category_names` str (K,): the dataset's categories sorted by id; the
  trainer's contiguous class c is category_ids[c].
Attributes: `split`, `shard_size` and `content_sha256` (the digest of the datasets, pipeline.identity).
Shards and categories come from the dataset's manifest (pipeline.manifest), not a parse of train.json.
Every frame of the split is a row, also frames without any box (they train the classifier's background).
Boxes of crowd tracks (iscrowd = 1) and empty boxes (w or h ≤ 0) are left out, as detectron2 does.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import h5py
import numpy as np

from pipeline.identity import DIGEST_ATTR, h5_digest
from pipeline.io import atomic_file, setup_logging
from pipeline.manifest import load_manifest
from pipeline.ytvis import YtvisDataset, load_ytvis


@dataclass(frozen=True)
class FrameIndex:
    """The columns of an index file (see the module docstring for shapes and meaning)."""

    video_id: np.ndarray
    frame_index: np.ndarray
    file_name: list[str]
    shard: np.ndarray
    height: np.ndarray
    width: np.ndarray
    box_offsets: np.ndarray
    boxes_xywh: np.ndarray
    box_category_ids: np.ndarray
    box_track_ids: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]


def build_index(split: YtvisDataset, all_video_ids: list[int], shard_size: int,
                category_ids: list[int], category_names: list[str]) -> FrameIndex:
    """One row per frame of every video of `split`; shards are positions in the full dataset's sorted ids."""
    shard_by_video = {}
    ordered = sorted(all_video_ids)
    position = {vid: i for i, vid in enumerate(ordered)}
    for video in split.videos:
        if video.id not in position:
            raise ValueError(f"{split.annotation_file}: video {video.id} is not in the dataset's train.json; "
                             f"rerun rule split")
        shard_by_video[video.id] = position[video.id] // shard_size
    tracks_of_video = split.tracks_of_video
    columns: dict[str, list] = {k: [] for k in ("video_id", "frame_index", "file_name", "shard", "height",
                                                "width")}
    offsets, boxes, cats, tracks = [0], [], [], []
    for video in split.videos:
        for t, name in enumerate(video.file_names):
            for key, value in (("video_id", video.id), ("frame_index", t), ("file_name", name),
                               ("shard", shard_by_video[video.id]), ("height", video.height),
                               ("width", video.width)):
                columns[key].append(value)
            for track in tracks_of_video[video.id]:
                box = track.bboxes_xywh[t]
                if track.iscrowd or box is None or box[2] <= 0 or box[3] <= 0:
                    continue
                boxes.append(box)
                cats.append(track.category_id)
                tracks.append(track.id)
            offsets.append(len(boxes))
    return FrameIndex(
        video_id=np.asarray(columns["video_id"], dtype=np.int64),
        frame_index=np.asarray(columns["frame_index"], dtype=np.int32),
        file_name=columns["file_name"],
        shard=np.asarray(columns["shard"], dtype=np.int32),
        height=np.asarray(columns["height"], dtype=np.int32),
        width=np.asarray(columns["width"], dtype=np.int32),
        box_offsets=np.asarray(offsets, dtype=np.int64),
        boxes_xywh=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_category_ids=np.asarray(cats, dtype=np.int64),
        box_track_ids=np.asarray(tracks, dtype=np.int64),
        category_ids=np.asarray(category_ids, dtype=np.int64),
        category_names=list(category_names),
    )


def write_index(index: FrameIndex, path: str | os.PathLike, attrs: dict[str, str | int]) -> None:
    """Write `index` to the h5 file `path` through a temporary file and a rename, with `attrs` and the digest
    of the written datasets (pipeline.identity.DIGEST_ATTR)."""
    strings = h5py.string_dtype("utf-8")
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in vars(index).items():
            if isinstance(value, list):
                f.create_dataset(name, data=np.asarray(value, dtype=object), dtype=strings)
            else:
                f.create_dataset(name, data=value)
        f.attrs.update(attrs | {DIGEST_ATTR: h5_digest(f)})


def main(argv: list[str] | None = None) -> None:
    """CLI: index the frames of one split json of the dataset at --root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset folder (train.json + JPEGImages/)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest (results/manifest.json)")
    parser.add_argument("--split", required=True, help="YouTube-VIS json of the split (results/split/...)")
    parser.add_argument("--shard-size", type=int, required=True, help="flow.shard_size")
    parser.add_argument("--out", required=True, help="results/index/{split}.h5")
    args = parser.parse_args(argv)
    log = setup_logging()
    if args.shard_size < 1:
        raise ValueError(f"flow.shard_size must be ≥ 1, got {args.shard_size}")
    full = load_manifest(args.manifest, args.root)
    split = load_ytvis(args.root, os.path.abspath(args.split), check_files=True, progress=True)
    index = build_index(split, [v.id for v in full.videos], args.shard_size,
                        [c.id for c in full.categories], [c.name for c in full.categories])
    write_index(index, args.out, {"split": str(args.split), "shard_size": args.shard_size})
    log.info("%s: %d frames, %d boxes, %d frames without boxes, %d videos", args.out, len(index.file_name),
             len(index.boxes_xywh), int((np.diff(index.box_offsets) == 0).sum()), len(split.videos))


if __name__ == "__main__":
    main()
