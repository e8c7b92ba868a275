"""The train_train / train_val split and train_val's image-level COCO ground truth (method §1.2-1.3).

The paper follows [14]: for each category, 10 videos drawn from those containing it; train_val is the union,
train_train the rest. The original list is not public, so this is a seeded reconstruction whose counts are
reported beside the paper's (1847/391 videos, 51049/10796 images) in summary.json.

CLI: python -m pipeline.split --root ROOT --params '{"videos_per_class": 10, "seed": 0}' --out-dir results/split
    [--check-frames]

Frame files are checked cheaply on every run: each exists and its header (JPEG SOF, PNG IHDR) gives the size
train.json states. `--check-frames` also decodes every frame with the stages' reader (pipeline.ytvis.read_frame:
truncated or undecodable files are errors): about 5 ms per 720p frame on one core, so a few minutes for
YouTube-VIS; worth it once for a freshly copied dataset.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.io import params_from_json, setup_logging, write_json_atomic
from pipeline.ytvis import (Rle, YtvisDataset, YtvisError, check_frames_decode, compressed_counts,
                            compressed_rle_stats, load_ytvis, ytvis_json)

PAPER_COUNTS = {"train_train": {"videos": 1847, "images": 51049},
                "train_val": {"videos": 391, "images": 10796}}
RECONSTRUCTION_NOTE = (
    "Reconstructed split, not the original: the paper's train_val list (from [14]) is not public. For each "
    "category, `videos_per_class` videos are drawn (seeded, without replacement within the class) from the "
    "videos containing it; train_val is the union and train_train every other video. Counts differ from the "
    "paper's by chance (videos drawn for several classes) and by the seed.")

log = logging.getLogger("mowis.split")


@dataclass(frozen=True)
class SplitParams:
    """The `split` config section."""
    videos_per_class: int  # N of method §1.2 (the paper: 10)
    seed: int

    def __post_init__(self) -> None:
        if type(self.videos_per_class) is not int or self.videos_per_class < 1:
            raise ValueError(f"split.videos_per_class: expected an integer >= 1, got {self.videos_per_class!r}")
        if type(self.seed) is not int:
            raise ValueError(f"split.seed: expected an integer, got {self.seed!r}")


def videos_of_category(dataset: YtvisDataset) -> dict[int, list[int]]:
    """For every category id, the sorted ids of the videos with at least one track of that category."""
    out: dict[int, set[int]] = {c.id: set() for c in dataset.categories}
    for track in dataset.tracks:
        out[track.category_id].add(track.video_id)
    return {cid: sorted(vids) for cid, vids in out.items()}


def split_videos(dataset: YtvisDataset, videos_per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """(train_train ids, train_val ids), each sorted (method §1.2). Categories in id order draw
    min(videos_per_class, available) videos from one seeded generator; train_val is the union of the draws."""
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class must be >= 1, got {videos_per_class}")
    rng = np.random.default_rng(seed)
    train_val: set[int] = set()
    for cid, candidates in sorted(videos_of_category(dataset).items()):
        if len(candidates) <= videos_per_class:
            train_val.update(candidates)
            continue
        picked = rng.choice(len(candidates), size=videos_per_class, replace=False)
        train_val.update(candidates[i] for i in picked)
    if not train_val:
        raise YtvisError(dataset.annotation_file, "dataset", "annotations",
                         f"no video has an annotated track ({len(dataset.tracks)} annotations, "
                         f"{len(dataset.categories)} categories), so train_val would be empty and evaluation "
                         f"would have nothing to score; use the dataset's annotated train.json")
    train_train = [v.id for v in dataset.videos if v.id not in train_val]
    return train_train, sorted(train_val)


def _checked_compressed(rles: list[Rle], frames: list[int], file: Path, item: str) -> list[str]:
    """Compressed counts of `rles` (frames `frames` of one track). Counts that came compressed are decoded once
    (vectorised) to check their run lengths, the part of the RLE check `load_ytvis` leaves to the data used."""
    height, width = rles[0].size
    given = [i for i, r in enumerate(rles) if isinstance(r.counts, str)]
    if given:
        totals, smallest = compressed_rle_stats([rles[i].counts for i in given])  # type: ignore[misc]
        bad = np.flatnonzero((totals != height * width) | (smallest < 0))
        if bad.size:
            t = frames[given[int(bad[0])]]
            raise YtvisError(file, item, f"segmentations[{t}]", f"compressed RLE decodes to "
                             f"{int(totals[bad[0]])} pixels with smallest run {int(smallest[bad[0]])}; "
                             f"expected {height * width} pixels and no negative run")
    return compressed_counts(rles)


def to_coco(dataset: YtvisDataset, video_ids: Iterable[int], progress: bool = False) -> dict[str, Any]:
    """Image-level COCO ground truth of `video_ids` (method §1.3): one image per frame (ids from 1, in video id then
    frame order, with `video_id`, `frame_index`, `file_name` relative to JPEGImages, `height`, `width`), one
    annotation per (track, frame) where the track is present: compressed RLE (counts str; none in a boxes-only
    dataset), `bbox` XYWH, `area` from the json's `areas`, `iscrowd`, `category_id`, and `instance_id` = the
    track id."""
    keep = sorted(set(video_ids))
    videos = dataset.video_by_id
    unknown = [v for v in keep if v not in videos]
    if unknown:
        raise KeyError(f"{dataset.annotation_file}: video ids {unknown[:10]} are not in the dataset")
    tracks_of_video = dataset.tracks_of_video
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for vid in tqdm(keep, desc="coco", unit="video", disable=not progress):
        video = videos[vid]
        first_image_id = len(images) + 1
        images.extend({"id": first_image_id + t, "video_id": vid, "frame_index": t, "file_name": name,
                       "height": video.height, "width": video.width}
                      for t, name in enumerate(video.file_names))
        for track in tracks_of_video[vid]:
            frames = [t for t, box in enumerate(track.bboxes_xywh) if box is not None]
            if not frames:
                continue
            counts = (_checked_compressed([track.segmentations[t] for t in frames], frames,  # type: ignore[misc]
                                          dataset.annotation_file, f"annotation {track.id} (video {vid})")
                      if dataset.has_masks else [None] * len(frames))
            for t, c in zip(frames, counts):
                mask = {"segmentation": {"size": [video.height, video.width], "counts": c}} if c else {}
                annotations.append({"id": len(annotations) + 1, "image_id": first_image_id + t,
                                    "category_id": track.category_id, "iscrowd": track.iscrowd, **mask,
                                    "bbox": list(track.bboxes_xywh[t]), "area": track.areas[t],
                                    "instance_id": track.id})
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in dataset.categories]
    return {"info": {"description": "image-level ground truth of YouTube-VIS videos (mowis split)"},
            "images": images, "annotations": annotations, "categories": categories}


def _counts(dataset: YtvisDataset, video_ids: list[int]) -> dict[str, int]:
    """Videos, frames, frames with at least one object, and (track, frame) objects (masks; boxes in a boxes-only
    dataset) of a subset."""
    videos = dataset.video_by_id
    tracks_of_video = dataset.tracks_of_video
    images = with_masks = masks = 0
    for vid in video_ids:
        images += videos[vid].length
        present = [False] * videos[vid].length
        for track in tracks_of_video[vid]:
            for t, box in enumerate(track.bboxes_xywh):
                if box is not None:
                    present[t] = True
                    masks += 1
        with_masks += sum(present)
    return {"videos": len(video_ids), "images": images, "images_with_masks": with_masks, "masks": masks}


def split_summary(dataset: YtvisDataset, train_train: list[int], train_val: list[int],
                  params: SplitParams) -> dict[str, Any]:
    """Our counts beside the paper's, the seed and per-class counts; names classes with too few videos."""
    by_category = videos_of_category(dataset)
    val = set(train_val)
    per_class = {}
    short = []
    for c in dataset.categories:
        available = len(by_category[c.id])
        if available < params.videos_per_class:
            short.append(c.name)
        per_class[c.name] = {"category_id": c.id, "videos_available": available,
                             "drawn": min(available, params.videos_per_class),
                             "train_val_videos": sum(1 for v in by_category[c.id] if v in val),
                             "train_train_videos": sum(1 for v in by_category[c.id] if v not in val)}
    notes = [RECONSTRUCTION_NOTE,
             "Images are all annotated frames of the videos (method §1.3); 'images_with_masks' counts the frames "
             "with at least one non-null mask, for comparison with the paper's counts."]
    if short:
        notes.append(f"{len(short)} classes have fewer than {params.videos_per_class} videos; all their videos "
                     f"went to train_val: {', '.join(short)}")
    return {"reconstruction": True, "seed": params.seed, "videos_per_class": params.videos_per_class,
            "annotation_file": str(dataset.annotation_file),
            "ours": {"train_train": _counts(dataset, train_train), "train_val": _counts(dataset, train_val)},
            "paper": PAPER_COUNTS, "classes_with_fewer_videos": short, "per_class": per_class, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    """Validate the dataset, split it, and write the four outputs (nothing when validation fails)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="YouTube-VIS folder with train.json and JPEGImages/")
    parser.add_argument("--annotation-file", default="train.json", help="relative to --root")
    parser.add_argument("--params", required=True, help="the `split` config section as JSON")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--check-frames", action="store_true",
                        help="also decode every frame (truncated or corrupt files are errors); slower")
    args = parser.parse_args(argv)
    setup_logging()
    params = params_from_json(SplitParams, args.params, "config section 'split'")
    try:
        dataset = load_ytvis(args.root, args.annotation_file, check_files=True, progress=True)
        if args.check_frames:
            check_frames_decode(dataset, progress=True)
        train_train, train_val = split_videos(dataset, params.videos_per_class, params.seed)
        coco = to_coco(dataset, train_val, progress=True)
    except YtvisError as e:
        log.error("invalid dataset, nothing written: %s", e)
        return 1
    summary = split_summary(dataset, train_train, train_val, params)
    outputs = {"train_train.json": ytvis_json(dataset, train_train), "train_val.json": ytvis_json(dataset, train_val),
               "train_val_coco.json": coco}
    for name, obj in outputs.items():
        write_json_atomic(args.out_dir / name, obj, indent=None)
    write_json_atomic(args.out_dir / "summary.json", summary, indent=1)
    ours = summary["ours"]
    log.info("train_train %d videos / %d images, train_val %d videos / %d images (paper 1847/51049, 391/10796); "
             "reconstruction, seed %d", ours["train_train"]["videos"], ours["train_train"]["images"],
             ours["train_val"]["videos"], ours["train_val"]["images"], params.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
