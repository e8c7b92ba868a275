"""pipeline.ytvis: loading, every malformed-input error, the directory-scan frame check, the subset writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline import ytvis
from pipeline.ytvis import Rle, YtvisError, compressed_rle_stats, load_ytvis, write_ytvis

from damage import damage_frame


def edit(root: Path, change) -> None:
    """Apply `change(data)` to root/train.json in place."""
    path = root / "train.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def video(data: dict, vid: int) -> dict:
    return next(v for v in data["videos"] if v["id"] == vid)


def ann(data: dict, aid: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == aid)


def test_valid_dataset_loads_into_sorted_records(make_ytvis):
    root = make_ytvis(videos=4, frames=5, rle="mixed")
    raw = json.loads((root / "train.json").read_text())
    ds = load_ytvis(root)
    assert [v.id for v in ds.videos] == sorted(v["id"] for v in raw["videos"])
    assert [t.id for t in ds.tracks] == sorted(a["id"] for a in raw["annotations"])
    assert [c.id for c in ds.categories] == [1, 2, 3]
    v = ds.video_by_id[101]
    assert (v.length, v.height, v.width) == (5, 24, 32)
    assert ds.frame_path(v, 2) == root / "JPEGImages" / "vid000ab" / "00010.jpg"
    track = ds.tracks[0]
    raw_track = ann(raw, track.id)
    for t in range(5):
        seg = raw_track["segmentations"][t]
        if seg is None:
            assert track.segmentations[t] is None and track.bboxes_xywh[t] is None and track.areas[t] is None
        else:
            assert track.segmentations[t] == Rle((24, 32), seg["counts"])
            assert list(track.bboxes_xywh[t]) == raw_track["bboxes"][t]
            assert track.areas[t] == raw_track["areas"][t]
    assert sum(len(ts) for ts in ds.tracks_of_video.values()) == len(raw["annotations"])


def _set(path: list, value):
    """A change that sets data[path...] = value; path steps may be ('video', id) or ('ann', id)."""
    def change(data):
        node = data
        for step in path[:-1]:
            node = video(node, step[1]) if isinstance(step, tuple) and step[0] == "video" else \
                ann(node, step[1]) if isinstance(step, tuple) else node[step]
        node[path[-1]] = value
    return change


def _delete(path: list):
    def change(data):
        node = data
        for step in path[:-1]:
            node = video(node, step[1]) if isinstance(step, tuple) and step[0] == "video" else \
                ann(node, step[1]) if isinstance(step, tuple) else node[step]
        del node[path[-1]]
    return change


def _seg(aid: int, t: int, value):
    """Set segmentations[t] of annotation `aid` (frame 0 of annotation 1000 is present in the fixture)."""
    def change(data):
        ann(data, aid)["segmentations"][t] = value
    return change


def _present_seg(data) -> dict:
    return ann(data, 1000)["segmentations"][0]


MALFORMED = {
    # name: (change, item named, field named)
    "missing videos": (_delete(["videos"]), "dataset", "videos"),
    "missing video width": (_delete([("video", 108), "width"]), "video 108", "width"),
    "missing video file_names": (_delete([("video", 108), "file_names"]), "video 108", "file_names"),
    "missing annotation bboxes": (_delete([("ann", 1011), "bboxes"]), "annotation 1011", "bboxes"),
    "missing annotation id": (_delete([("ann", 1011), "id"]), "annotations[", "id"),
    "missing category name": (lambda d: d["categories"][1].pop("name"), "category 2", "name"),
    "length differs from file_names": (_set([("video", 108), "length"], 4), "video 108", "file_names"),
    "segmentations shorter than video": (lambda d: ann(d, 1011)["segmentations"].pop(), "annotation 1011",
                                         "segmentations"),
    "areas longer than video": (lambda d: ann(d, 1011)["areas"].append(3), "annotation 1011", "areas"),
    "bbox where segmentation null": (lambda d: ann(d, 1000)["bboxes"].__setitem__(3, [1, 1, 2, 2]),
                                     "annotation 1000", "bboxes[3]"),
    "area where segmentation null": (lambda d: ann(d, 1000)["areas"].__setitem__(3, 4), "annotation 1000",
                                     "areas[3]"),
    "segmentation where bbox null": (lambda d: ann(d, 1000)["bboxes"].__setitem__(0, None), "annotation 1000",
                                     "bboxes[0]"),
    "unknown category": (_set([("ann", 1011), "category_id"], 41), "annotation 1011", "category_id"),
    "unknown video": (_set([("ann", 1011), "video_id"], 9999), "annotation 1011", "video_id"),
    "duplicate video id": (_set([("video", 108), "id"], 101), "video 101", "id"),
    "duplicate annotation id": (_set([("ann", 1011), "id"], 1000), "annotation 1000", "id"),
    "duplicate category id": (lambda d: d["categories"][1].__setitem__("id", 1), "category 1", "id"),
    "absolute file name": (lambda d: video(d, 108)["file_names"].__setitem__(1, "/etc/passwd"), "video 108",
                           "file_names[1]"),
    "parent escape": (lambda d: video(d, 108)["file_names"].__setitem__(2, "../../secret.jpg"), "video 108",
                      "file_names[2]"),
    "inner parent escape": (lambda d: video(d, 108)["file_names"].__setitem__(0, "vid001ab/../../x.jpg"),
                            "video 108", "file_names[0]"),
    "zero width": (_set([("video", 108), "width"], 0), "video 108", "width"),
    "negative height": (_set([("video", 108), "height"], -24), "video 108", "height"),
    "zero length": (_set([("video", 108), "length"], 0), "video 108", "length"),
    "width not an integer": (_set([("video", 108), "width"], "32"), "video 108", "width"),
    "RLE counts wrong type": (_seg(1000, 0, {"size": [24, 32], "counts": 17}), "annotation 1000",
                              "segmentations[0]"),
    "RLE size differs from video": (lambda d: _present_seg(d).__setitem__("size", [32, 24]), "annotation 1000",
                                    "segmentations[0]"),
    "RLE string outside alphabet": (lambda d: _present_seg(d).__setitem__("counts", "a~b1"), "annotation 1000",
                                    "segmentations[0]"),
    "RLE string cut mid-value": (lambda d: _present_seg(d).__setitem__("counts", _present_seg(d)["counts"] + "a"),
                                 "annotation 1000", "segmentations[0]"),
    "RLE list sum wrong": (_seg(1000, 0, {"size": [24, 32], "counts": [100, 20, 3]}), "annotation 1000",
                           "segmentations[0]"),
    "RLE list negative run": (_seg(1000, 0, {"size": [24, 32], "counts": [800, -40, 8]}), "annotation 1000",
                              "segmentations[0]"),
    "RLE list of floats": (_seg(1000, 0, {"size": [24, 32], "counts": [700.0, 68]}), "annotation 1000",
                           "segmentations[0]"),
    "polygon segmentation": (_seg(1000, 0, [[1, 1, 5, 1, 5, 5]]), "annotation 1000", "segmentations[0]"),
    "box with three numbers": (lambda d: ann(d, 1000)["bboxes"].__setitem__(0, [1, 2, 3]), "annotation 1000",
                               "bboxes[0]"),
    "negative area": (lambda d: ann(d, 1000)["areas"].__setitem__(0, -5), "annotation 1000", "areas[0]"),
    "iscrowd not 0/1": (_set([("ann", 1011), "iscrowd"], 2), "annotation 1011", "iscrowd"),
    # Absurd sizes, ids and numbers.
    "width of a million": (_set([("video", 108), "width"], 10**6), "video 108", "width"),
    "height just above MAX_SIDE": (_set([("video", 108), "height"], ytvis.MAX_SIDE + 1), "video 108", "height"),
    "video id beyond int64": (_set([("video", 108), "id"], 2**70), "videos[", "id"),
    "negative annotation id": (_set([("ann", 1011), "id"], -3), "annotations[", "id"),
    "bool video id": (_set([("video", 108), "id"], True), "videos[", "id"),
    "bool category id": (_set([("ann", 1011), "category_id"], True), "annotation 1011", "category_id"),
    "video_id beyond int64": (_set([("ann", 1011), "video_id"], 2**64), "annotation 1011", "video_id"),
    "NaN in a box": (lambda d: ann(d, 1000)["bboxes"][0].__setitem__(1, float("nan")), "annotation 1000",
                     "bboxes[0]"),
    "infinite area": (lambda d: ann(d, 1000)["areas"].__setitem__(0, float("inf")), "annotation 1000", "areas[0]"),
    "NaN width": (_set([("video", 108), "width"], float("nan")), "video 108", "width"),
    "huge integer box": (lambda d: ann(d, 1000)["bboxes"].__setitem__(0, [10**400, 0.0, 1.0, 1.0]),
                         "annotation 1000", "bboxes[0]"),  # x + w would overflow converting to float
    "huge integer area": (lambda d: ann(d, 1000)["areas"].__setitem__(0, 10**400), "annotation 1000", "areas[0]"),
    "area above h*w": (lambda d: ann(d, 1000)["areas"].__setitem__(0, 24 * 32 + 1), "annotation 1000",
                       "areas[0]"),
    "box past the right edge": (lambda d: ann(d, 1000)["bboxes"].__setitem__(0, [20.0, 0.0, 14.0, 5.0]),
                                "annotation 1000", "bboxes[0]"),
    "box above the frame": (lambda d: ann(d, 1000)["bboxes"].__setitem__(0, [0.0, -1.5, 4.0, 5.0]),
                            "annotation 1000", "bboxes[0]"),
    "RLE list with a bool": (_seg(1000, 0, {"size": [24, 32], "counts": [767, True]}), "annotation 1000",
                             "segmentations[0]"),
    "RLE size of junk": (lambda d: _present_seg(d).__setitem__("size", [[[]]] * 3), "annotation 1000",
                         "segmentations[0]"),
    "NUL in a file name": (lambda d: video(d, 108)["file_names"].__setitem__(1, "vid001ab/00\x005.jpg"),
                           "video 108", "file_names[1]"),
    "lone surrogate in a file name": (lambda d: video(d, 108)["file_names"].__setitem__(1, "vid001ab/\ud800.jpg"),
                                      "video 108", "file_names[1]"),
    "file name component too long": (lambda d: video(d, 108)["file_names"].__setitem__(1, "a" * 252 + ".jpg"),
                                     "video 108", "file_names[1]"),
    "right-to-left override in a class name": (lambda d: d["categories"][1].__setitem__("name", "gpj.\u202ecat"),
                                               "category 2", "name"),
    "supercategory not a string": (lambda d: d["categories"][1].__setitem__("supercategory", 5), "category 2",
                                   "supercategory"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_input_names_file_item_and_field(make_ytvis, name):
    change, item, field = MALFORMED[name]
    root = make_ytvis(videos=2, frames=5, rle="str")
    edit(root, change)
    with pytest.raises(YtvisError) as info:
        load_ytvis(root)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(root / "train.json") in str(err)
    assert item in err.item, (err.item, str(err))
    assert field in err.field or field == err.field, (err.field, str(err))
    assert f"'{err.field}'" in str(err) and err.item in str(err)


def test_absurd_json_text_is_refused_naming_the_file(make_ytvis):
    """What never gets to a field: nesting deeper than the parser allows, an integer of 5000 digits."""
    root = make_ytvis(videos=2, frames=3)
    text = (root / "train.json").read_text()
    cases = {"nested": text[:-1] + ', "info": ' + "[" * 100_000 + "]" * 100_000 + "}",
             "nested object": "{" + '"a": {' * 50_000 + "}" * 50_001,
             "5000 digits": text.replace('"id": 101', '"id": 1' + "0" * 5000, 1)}
    for name, bad in cases.items():
        path = root / f"{name}.json"
        path.write_text(bad)
        with pytest.raises(YtvisError, match="not valid JSON") as info:
            load_ytvis(root, path.name)
        assert info.value.file == str(path) and info.value.item == "dataset", name
    with pytest.raises(YtvisError, match="cannot read the annotation file"):
        load_ytvis(root, ".")  # a folder


def test_edge_values_still_load(make_ytvis):
    """Limits are inclusive: ids 0 and 2**63 - 1, a box on the frame edge and one pixel past it, area h*w,
    a non-ASCII file name with spaces, sides of MAX_SIDE."""
    root = make_ytvis(videos=2, frames=3)

    def change(data):
        track = ann(data, 1000)
        track["bboxes"][0], track["bboxes"][1] = [0, 0, 32, 24], [-1.0, -1.0, 34.0, 26.0]
        track["areas"][0] = 24 * 32
        track["id"] = 0
        for a in data["annotations"]:
            if a["video_id"] == 108:
                a["video_id"] = 2**63 - 1
        video(data, 108)["id"] = 2**63 - 1
        video(data, 101)["file_names"][0] = "vidé/00000 — 1.jpg"

    def widen(data):
        for record in data["videos"] + data["annotations"]:
            record["width"] = record["height"] = ytvis.MAX_SIDE

    edit(root, change)
    ds = load_ytvis(root, check_files=False)
    assert ds.tracks[0].id == 0 and ds.tracks[0].bboxes_xywh[:2] == ((0, 0, 32, 24), (-1.0, -1.0, 34.0, 26.0))
    assert ds.video_by_id[2**63 - 1].length == 3 and ds.video_by_id[101].file_names[0] == "vidé/00000 — 1.jpg"
    edit(root, widen)
    with pytest.raises(YtvisError, match=r"field 'segmentations\[\d\]': RLE size"):  # the sides pass
        load_ytvis(root, check_files=False)


def test_missing_frame_file_is_named(make_ytvis):
    root = make_ytvis(videos=3, frames=4)
    os.remove(root / "JPEGImages" / "vid001ab" / "00010.jpg")
    with pytest.raises(YtvisError, match=r"video 108: field 'file_names\[2\]'.*vid001ab/00010.jpg"):
        load_ytvis(root)
    assert load_ytvis(root, check_files=False).video_by_id[108].length == 4


def test_missing_frame_folder_and_missing_annotation_file(make_ytvis, tmp_path):
    root = make_ytvis(videos=3, frames=4)
    (root / "JPEGImages" / "vid002ab").rename(root / "elsewhere")
    with pytest.raises(YtvisError, match=r"video 115: field 'file_names\[0\]'"):
        load_ytvis(root)
    with pytest.raises(YtvisError, match="does not exist"):
        load_ytvis(tmp_path / "nothing")
    (root / "broken.json").write_text("{")
    with pytest.raises(YtvisError, match="not valid JSON"):
        load_ytvis(root, "broken.json")


def test_frame_check_scans_each_folder_once(make_ytvis, monkeypatch):
    root = make_ytvis(videos=5, frames=6)
    calls = []
    real = os.scandir

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(ytvis.os, "scandir", counting)
    load_ytvis(root)
    assert sorted(calls) == [f"vid{k:03d}ab" for k in range(5)]


def test_writer_round_trips_a_subset(make_ytvis, tmp_path):
    root = make_ytvis(videos=4, frames=5, rle="mixed")
    ds = load_ytvis(root)
    out = tmp_path / "out" / "subset.json"
    write_ytvis(ds, [115, 101], out, compress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset.json"]  # no temporary left behind
    sub = load_ytvis(root, out)
    assert [v.id for v in sub.videos] == [101, 115]
    assert sub.videos == tuple(v for v in ds.videos if v.id in (101, 115))
    assert sub.tracks == tuple(t for t in ds.tracks if t.video_id in (101, 115))
    assert sub.categories == ds.categories and sub.info == ds.info
    # Compressed (the default): same masks, every counts a string.
    write_ytvis(ds, [115, 101], out)
    packed = load_ytvis(root, out)
    assert packed.videos == sub.videos
    for before, after in zip(sub.tracks, packed.tracks):
        assert (before.bboxes_xywh, before.areas, before.id) == (after.bboxes_xywh, after.areas, after.id)
        for s_before, s_after in zip(before.segmentations, after.segmentations):
            assert (s_before is None) == (s_after is None)
            if s_before is not None:
                assert isinstance(s_after.counts, str)
                mask = mask_utils.decode({"size": list(s_after.size), "counts": s_after.counts.encode()})
                if isinstance(s_before.counts, np.ndarray):
                    flat = np.repeat(np.arange(len(s_before.counts)) % 2, s_before.counts)
                    assert np.array_equal(mask, flat.reshape(32, 24).T)
                else:
                    assert s_after.counts == s_before.counts
    with pytest.raises(KeyError, match="9999"):
        write_ytvis(ds, [101, 9999], tmp_path / "out" / "bad.json")
    assert not (tmp_path / "out" / "bad.json").exists()


def test_compressed_rle_stats_match_pycocotools_decoding():
    rng = np.random.default_rng(1)
    strings, totals, smallest = [], [], []
    for i in range(60):
        h, w = (int(x) for x in rng.integers(1, 90, 2))
        m = (rng.random((h, w)) < [0.0, 1.0, 0.02, 0.5, 0.97][i % 5]).astype(np.uint8)
        if i == 7:
            m = np.zeros((700, 1300), np.uint8)  # one long run: multi-character values
            m[650:, 1200:] = 1
        strings.append(mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii"))
        flat = m.ravel(order="F")  # brute-force run lengths
        runs, start, value = [], 0, 0
        for p in range(flat.size + 1):
            if p == flat.size or flat[p] != value:
                runs.append(p - start)
                start, value = p, 1 - value
        totals.append(sum(runs))
        smallest.append(min(runs))
    got_totals, got_smallest = compressed_rle_stats(strings)
    assert got_totals.tolist() == totals
    assert got_smallest.tolist() == smallest


def test_error_values_are_cut_short():
    """Values in messages: long reprs cut at 80 characters, huge integers and too-deep nesting described."""
    deep: list = []
    for _ in range(5000):  # deeper than repr can go (json stops near 1000, at another stack depth)
        deep = [deep]
    assert ytvis._short(deep) == "a list nested too deeply to show"
    assert ytvis._short(10**400) == "an integer of 80+ digits"
    assert ytvis._short("a" * 100) == "'" + "a" * 79 + "..."
    assert ytvis._short([1.5, None]) == "[1.5, None]"


# --- frame files: the one reader and the header check ----------------------------------------------------

@pytest.mark.parametrize("how", ["truncated_jpeg", "wrong_size"])
def test_read_frame_refuses_a_damaged_frame_naming_file_video_and_frame(make_ytvis, how):
    root = make_ytvis(videos=2, frames=3)
    path = root / "JPEGImages" / "vid001ab" / "00010.jpg"
    damage_frame(path, how)
    with pytest.raises(ValueError) as err:
        ytvis.read_frame(path, 108, 2, 24, 32)
    assert str(path) in str(err.value) and "video 108 frame 2" in str(err.value)
    assert ("truncated JPEG" if how == "truncated_jpeg" else "32x28, train.json says 32x24") in str(err.value)


def test_read_frame_equals_opencv_on_good_files_and_allows_nul_padding(make_ytvis, tmp_path):
    import cv2

    root = make_ytvis(videos=1, frames=2)
    path = root / "JPEGImages" / "vid000ab" / "00005.jpg"
    want = cv2.imread(str(path))[..., ::-1]
    assert np.array_equal(ytvis.read_frame(path, 101, 1, 24, 32), want)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(path.read_bytes() + bytes(100))  # some tools pad files with NULs after the EOI marker
    assert np.array_equal(ytvis.read_frame(padded, 101, 1, 24, 32), want)
    with pytest.raises(FileNotFoundError, match="video 101 frame 7 is missing"):
        ytvis.read_frame(tmp_path / "absent.jpg", 101, 7, 24, 32)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    with pytest.raises(ValueError, match="junk.jpg: video 101 frame 0 is not a readable image"):
        ytvis.read_frame(tmp_path / "junk.jpg", 101, 0, 24, 32)


@pytest.mark.parametrize("kind", ["baseline", "progressive", "big_app_segment", "png"])
def test_frame_size_from_the_header_equals_the_decoded_size(tmp_path, kind):
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    path = tmp_path / ("f.png" if kind == "png" else "f.jpg")
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if kind == "progressive" else []
    cv2.imwrite(str(path), image, flags)
    if kind == "big_app_segment":  # an APP1 segment of 3000 bytes (EXIF-like) before the frame header
        data = path.read_bytes()
        path.write_bytes(data[:2] + b"\xff\xe1" + (3002).to_bytes(2, "big") + bytes(3000) + data[2:])
    assert ytvis.frame_size(path) == cv2.imread(str(path)).shape[:2] == (37, 53)
    data = path.read_bytes()
    path.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(ValueError, match=f"{path}: truncated"):
        ytvis.frame_size(path)


def test_frame_check_names_a_wrongly_sized_or_foreign_frame_file(make_ytvis):
    root = make_ytvis(videos=3, frames=4)
    damage_frame(root / "JPEGImages" / "vid002ab" / "00015.jpg", "wrong_size")
    with pytest.raises(YtvisError, match=r"video 115: field 'file_names\[3\]'.*vid002ab/00015.jpg is 32x28 "
                                         r"\(by its header\), the video's width x height is 32x24"):
        load_ytvis(root)
    root = make_ytvis("other", videos=3, frames=4)
    (root / "JPEGImages" / "vid000ab" / "00000.jpg").write_text("a text file")
    with pytest.raises(YtvisError, match=r"video 101: field 'file_names\[0\]'.*00000.jpg: neither a JPEG"):
        load_ytvis(root)


@pytest.mark.parametrize("elsewhere", [False, True])
@pytest.mark.parametrize("rle", ["list", "mixed"])
def test_numpy_parsed_counts_equal_the_json_parsers(make_ytvis, rle, elsewhere):
    """Uncompressed counts lifted out of the text and parsed by numpy (`read_json`) give the records the stdlib
    parser gives, also from compact json with newlines. A "counts" list outside the masks (here in info) makes
    read_json parse the whole text with orjson instead: the same records, counts as lists, info intact."""
    root = make_ytvis(videos=3, frames=4, rle=rle)
    data = json.loads((root / "train.json").read_text())
    data["info"] = {"counts": [1, 2]} if elsewhere else {}
    text = json.dumps(data, separators=(",", ":")).replace('"counts":[', '"counts" :\n [', 5)
    (root / "train.json").write_text(text)
    ds = load_ytvis(root)
    reference = ytvis.validate_ytvis(json.loads(text), root, root / "train.json", ds.sha256, True)
    assert ds.tracks == reference.tracks and ds.info == data["info"]
    counts = [s.counts for t in ds.tracks for s in t.segmentations if s is not None and not isinstance(s.counts, str)]
    assert counts and all(isinstance(c, list if elsewhere else np.ndarray) for c in counts)
    in_file = [seg["counts"] for a in sorted(data["annotations"], key=lambda a: a["id"]) for seg in a["segmentations"]
               if seg and isinstance(seg["counts"], list)]
    assert [list(map(int, c)) for c in counts] == in_file
