"""Your own videos, boxes only: a per-frame box CSV -> a YouTube-VIS 2019 `train.json` without masks.

The CSV has a header and one row per object per frame (x, y: the box's top-left corner; w, h: its size,
in pixels of the frame):

    video,frame,track,class,x,y,w,h
    cat_walk,00000.jpg,1,cat,12,40,88,60

`video` is a folder under `<root>/JPEGImages/`, `frame` a JPEG file in it, `track` an object id (unique in
its video), `class` a class name. Every JPEG of a listed video becomes one of its frames (sorted by name),
boxed or not; videos without rows are left out. Classes get ids 1..K in sorted name order. The annotations
have `bboxes` and `areas` (box areas) and no `segmentations`: `load_ytvis` accepts them for training with
box supervision, and evaluation reports box AP only.

    python -m pipeline.boxes_csv --root DATA --csv boxes.csv   # writes DATA/train.json
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path

import cv2

from pipeline.io import write_json_atomic
from pipeline.ytvis import FRAMES_DIR

COLUMNS = ("video", "frame", "track", "class", "x", "y", "w", "h")
FRAME_SUFFIXES = (".jpg", ".jpeg")


class BoxCsvError(ValueError):
    """A bad row or file in a box CSV; the message names the CSV, the line and the field."""


def _number(row: dict[str, str], key: str, where: str) -> float:
    """A finite number from column `key`."""
    try:
        value = float(row[key])
    except ValueError:
        raise BoxCsvError(f"{where}: column '{key}': expected a number, got {row[key]!r}") from None
    if not math.isfinite(value):
        raise BoxCsvError(f"{where}: column '{key}': expected a finite number, got {row[key]!r}")
    return value


def _frames(root: Path, video: str, where: str) -> list[str]:
    """The sorted JPEG names in `<root>/JPEGImages/<video>/`."""
    folder = root / FRAMES_DIR / video
    if video in ("", ".", "..") or "/" in video or os.sep in video:
        raise BoxCsvError(f"{where}: column 'video': {video!r} is not a folder name")
    if not folder.is_dir():
        raise BoxCsvError(f"{where}: column 'video': no folder {folder}")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not names:
        raise BoxCsvError(f"{where}: {folder} holds no JPEG frames")
    return names


def _frame_size(path: Path) -> tuple[int, int]:
    """(height, width) of the frame at `path`."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BoxCsvError(f"{path}: not a readable image")
    return image.shape[:2]


def read_rows(csv_path: Path) -> list[tuple[str, dict[str, str]]]:
    """The CSV's rows with their location ("file:line") for messages; the header must name COLUMNS."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BoxCsvError(f"{csv_path}: header lacks columns {missing}; expected {','.join(COLUMNS)}")
        return [(f"{csv_path}:{reader.line_num}", row) for row in reader]


def boxes_to_ytvis(root: Path, csv_path: Path) -> dict:
    """The YouTube-VIS json of the CSV's videos: frames from the folders, one annotation per (video, track)."""
    rows = read_rows(csv_path)
    if not rows:
        raise BoxCsvError(f"{csv_path}: no rows")
    classes = sorted({row["class"] for _, row in rows})
    class_id = {name: i + 1 for i, name in enumerate(classes)}
    videos: dict[str, dict] = {}
    tracks: dict[tuple[str, str], dict] = {}
    for where, row in rows:
        name = row["video"]
        if name not in videos:
            frames = _frames(root, name, where)
            height, width = _frame_size(root / FRAMES_DIR / name / frames[0])
            videos[name] = {"id": len(videos) + 1, "width": width, "height": height, "length": len(frames),
                            "file_names": [f"{name}/{frame}" for frame in frames],
                            "index": {frame: t for t, frame in enumerate(frames)}}
        video = videos[name]
        t = video["index"].get(row["frame"])
        if t is None:
            raise BoxCsvError(f"{where}: column 'frame': {row['frame']!r} is not a JPEG in {FRAMES_DIR}/{name}/")
        x, y, w, h = (_number(row, key, where) for key in "xywh")
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > video["width"] or y + h > video["height"]:
            raise BoxCsvError(f"{where}: box {[x, y, w, h]} is empty or leaves the {video['width']}x"
                              f"{video['height']} frame")
        track = tracks.setdefault((name, row["track"]), {"class": row["class"], "boxes": {}})
        if track["class"] != row["class"]:
            raise BoxCsvError(f"{where}: column 'class': track {row['track']!r} of video {name!r} is "
                              f"{track['class']!r} elsewhere, {row['class']!r} here")
        if t in track["boxes"]:
            raise BoxCsvError(f"{where}: track {row['track']!r} has two boxes in frame {row['frame']!r}")
        track["boxes"][t] = [x, y, w, h]
    annotations = []
    for (name, _), track in sorted(tracks.items(), key=lambda item: (videos[item[0][0]]["id"], item[0][1])):
        video = videos[name]
        boxes = [track["boxes"].get(t) for t in range(video["length"])]
        annotations.append({"id": len(annotations) + 1, "video_id": video["id"],
                            "category_id": class_id[track["class"]], "iscrowd": 0,
                            "width": video["width"], "height": video["height"], "bboxes": boxes,
                            "areas": [b[2] * b[3] if b else None for b in boxes]})
    return {"info": {"description": f"boxes only, converted from {csv_path.name}"}, "licenses": [],
            "videos": [{k: v for k, v in video.items() if k != "index"} for video in videos.values()],
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "object"} for name, i in class_id.items()]}


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a box CSV into `<root>/train.json` (or --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset folder holding JPEGImages/<video>/")
    parser.add_argument("--csv", required=True, type=Path, help="video,frame,track,class,x,y,w,h rows")
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/train.json")
    args = parser.parse_args(argv)
    data = boxes_to_ytvis(args.root, args.csv)
    out = args.out or args.root / "train.json"
    write_json_atomic(out, data)
    print(f"wrote {out}: {len(data['videos'])} videos, {len(data['annotations'])} tracks, "
          f"{len(data['categories'])} classes")


if __name__ == "__main__":
    main()
