"""The box CSV converter: frames from the folders, tracks with nulls where a box is absent, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.boxes_csv import BoxCsvError, boxes_to_ytvis, main

HEADER = "video,frame,track,class,x,y,w,h\n"


def frames(root: Path, video: str, count: int, height: int = 20, width: int = 30) -> None:
    """`count` JPEGs 00000.jpg.. of (height, width) in root/JPEGImages/<video>/."""
    folder = root / "JPEGImages" / video
    folder.mkdir(parents=True)
    for t in range(count):
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), np.full((height, width, 3), 10 * t, np.uint8))


def test_rows_become_tracks_with_nulls_where_absent(tmp_path: Path) -> None:
    """Two videos, three tracks; video b is 3 frames of 20x30, box areas w*h, classes sorted to ids 1..2."""
    frames(tmp_path, "b", 3)
    frames(tmp_path, "a", 2, height=24, width=32)
    (tmp_path / "boxes.csv").write_text(HEADER + "b,00002.jpg,7,dog,1,2,10,5\nb,00000.jpg,7,dog,0,0,30,20\n"
                                        "a,00001.jpg,1,cat,4,4,8,8\nb,00001.jpg,3,cat,2,2,3,3\n")
    main(["--root", str(tmp_path), "--csv", str(tmp_path / "boxes.csv")])
    data = __import__("json").loads((tmp_path / "train.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "cat", "supercategory": "object"},
                                  {"id": 2, "name": "dog", "supercategory": "object"}]
    b, a = data["videos"]  # in order of first appearance in the CSV
    assert b == {"id": 1, "width": 30, "height": 20, "length": 3,
                 "file_names": ["b/00000.jpg", "b/00001.jpg", "b/00002.jpg"]}
    assert a["height"] == 24 and a["width"] == 32 and a["length"] == 2
    by_video_track = {(ann["video_id"], ann["category_id"]): ann for ann in data["annotations"]}
    dog = by_video_track[(1, 2)]
    assert dog["bboxes"] == [[0, 0, 30, 20], None, [1, 2, 10, 5]] and dog["areas"] == [600, None, 50]
    assert "segmentations" not in dog
    assert by_video_track[(2, 1)]["bboxes"] == [None, [4, 4, 8, 8]]
    assert sorted(ann["id"] for ann in data["annotations"]) == [1, 2, 3]


@pytest.mark.parametrize("rows, fault", [
    ("c,00000.jpg,1,cat,0,0,5,5\n", "no folder"),
    ("b,00009.jpg,1,cat,0,0,5,5\n", "column 'frame'"),
    ("b,00000.jpg,1,cat,0,0,31,5\n", "leaves the 30x20 frame"),
    ("b,00000.jpg,1,cat,0,0,nan,5\n", "column 'w'"),
    ("b,00000.jpg,1,cat,0,0,x,5\n", "column 'w'"),
    ("b,00000.jpg,1,cat,0,0,5,5\nb,00001.jpg,1,dog,0,0,5,5\n", "column 'class'"),
    ("b,00000.jpg,1,cat,0,0,5,5\nb,00000.jpg,1,cat,1,1,5,5\n", "two boxes"),
    ("../b,00000.jpg,1,cat,0,0,5,5\n", "not a folder name"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: str, fault: str) -> None:
    """Each fault raises BoxCsvError naming the CSV line and the column or the problem; nothing is written."""
    frames(tmp_path, "b", 2)
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(HEADER + rows)
    with pytest.raises(BoxCsvError, match=fault) as error:
        boxes_to_ytvis(tmp_path, csv_path)
    assert str(csv_path) in str(error.value) or "no folder" in fault
    assert not (tmp_path / "train.json").exists()


def test_missing_columns_are_named(tmp_path: Path) -> None:
    """A header without the box columns is refused, listing them."""
    (tmp_path / "boxes.csv").write_text("video,frame,track,class\nb,00000.jpg,1,cat\n")
    with pytest.raises(BoxCsvError, match=r"lacks columns \['x', 'y', 'w', 'h'\]"):
        boxes_to_ytvis(tmp_path, tmp_path / "boxes.csv")
