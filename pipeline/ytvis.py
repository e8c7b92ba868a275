"""YouTube-VIS 2019 annotations (method §1.1): load and validate `train.json` into typed records, write subsets.

This is the only module that knows the field names of the YouTube-VIS json. `load_ytvis` checks every field
the stages use and raises `YtvisError` naming the file, the video/annotation/category id and the field.
RLE is checked cheaply here (counts type and alphabet, size, sum of uncompressed counts); compressed counts
are fully decoded only where they are used (`compressed_rle_stats`, called by `pipeline.split.to_coco`).
The file is parsed by orjson, with uncompressed counts lists of plain digits lifted out and parsed by numpy
first (`read_json`: a 500 MB train.json of them in about a quarter of the stdlib parser's time); numpy's
parser, unlike json, takes leading zeros ("007") in those lists as the decimal number.
Absurd input is refused too, never passed on: frame sides above MAX_SIDE, ids outside [0, MAX_ID] (int64),
NaN or infinite numbers (json reads NaN, Infinity and 1e400; every numeric field checks finiteness), nesting
deeper than the json parser allows, boxes outside the frame, areas above h*w, file and class names that are
not plain UTF-8 text (tests/pipeline/test_ytvis_fuzz.py mutates a valid file at random and checks that
nothing but YtvisError comes out).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import posixpath
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pipeline.io import write_json_atomic

FRAMES_DIR = "JPEGImages"
# The largest frame side accepted. YouTube-VIS frames are at most 1280x720 and 8K video is 7680x4320; a
# 16384² frame still keeps a mask's h*w (2.7e8) far inside pycocotools' 32-bit run lengths.
MAX_SIDE = 16384
MAX_ID = 2**63 - 1  # ids are stored as int64 in the frame index (pipeline/index.py)
BOX_SLACK = 1.0  # pixels a box may reach beyond the frame (tools that write x_max + 1, or round)
NAME_MAX_BYTES = 255  # longest file name component on Linux and macOS file systems (NAME_MAX)
PATH_MAX_BYTES = 1024  # longest relative frame path accepted

BoxXYWH = tuple[float, float, float, float]


class YtvisError(ValueError):
    """A malformed YouTube-VIS dataset; the message names the file, the item (video/annotation id) and field."""

    def __init__(self, file: str | os.PathLike, item: str, field: str, problem: str):
        self.file, self.item, self.field, self.problem = str(file), item, field, problem
        super().__init__(f"{file}: {item}: field '{field}': {problem}")


@dataclass(frozen=True, slots=True)
class Rle:
    """A run-length-encoded mask of a (height, width) frame, column-major as in pycocotools.
    counts: compressed (str) or uncompressed run lengths, starting with a background run: int64 (N,) numpy
    array when read from a file (`read_json` parses them with numpy), a list when built in code."""
    size: tuple[int, int]
    counts: str | list[int] | np.ndarray

    def __eq__(self, other: object) -> bool:
        """Same size and the same counts, uncompressed ones compared by value (list or array)."""
        if not isinstance(other, Rle) or self.size != other.size:
            return False
        if isinstance(self.counts, str) or isinstance(other.counts, str):
            return self.counts == other.counts
        return np.array_equal(self.counts, other.counts)


@dataclass(frozen=True, slots=True)
class Category:
    """One object class (YouTube-VIS 2019: ids 1..40)."""
    id: int
    name: str
    supercategory: str


@dataclass(frozen=True, slots=True)
class Video:
    """One video: its annotated frames, in order, as paths relative to `<root>/JPEGImages`."""
    id: int
    width: int
    height: int
    file_names: tuple[str, ...]

    @property
    def length(self) -> int:
        """Number of annotated frames T."""
        return len(self.file_names)


@dataclass(frozen=True, slots=True)
class Track:
    """One instance through a video; per-frame lists have the video's length T, None where the instance is absent
    (the three lists are null at the same frames). Boxes are XYWH in pixels; areas are mask pixel counts."""
    id: int
    video_id: int
    category_id: int
    iscrowd: int
    segmentations: tuple[Rle | None, ...]
    bboxes_xywh: tuple[BoxXYWH | None, ...]
    areas: tuple[float | None, ...]


@dataclass(frozen=True)
class YtvisDataset:
    """A validated YouTube-VIS annotation file. Videos and tracks are sorted by id; `tracks_of_video` maps every
    video id (tracks or not) to its tracks. `info`/`licenses` are carried through to written subsets. Read from
    the split's manifest (pipeline.manifest), it holds no masks: segmentations are all None, `has_masks` says
    whether train.json has them, and `annotation_file` is the manifest."""
    root: Path
    annotation_file: Path
    videos: tuple[Video, ...]
    tracks: tuple[Track, ...]
    categories: tuple[Category, ...]
    has_masks: bool  # whether the annotations carry masks; False for a boxes-only dataset (box AP only)
    sha256: str  # of the annotation file's bytes (read from a manifest: of the train.json it came from)
    info: Any
    licenses: Any

    @functools.cached_property
    def video_by_id(self) -> dict[int, Video]:
        """Videos keyed by id (built once; do not modify)."""
        return {v.id: v for v in self.videos}

    @functools.cached_property
    def tracks_of_video(self) -> dict[int, list[Track]]:
        """Tracks of each video id (empty list for a video without tracks), sorted by track id (built once)."""
        out: dict[int, list[Track]] = {v.id: [] for v in self.videos}
        for track in self.tracks:
            out[track.video_id].append(track)
        return out

    def subset(self, video_ids: Iterable[int]) -> YtvisDataset:
        """The same dataset restricted to the videos `video_ids` (all of them known) and their tracks."""
        keep = set(video_ids)
        unknown = keep - self.video_by_id.keys()
        if unknown:
            raise KeyError(f"{self.annotation_file}: video ids {sorted(unknown)[:10]} are not in the dataset")
        return replace(self, videos=tuple(v for v in self.videos if v.id in keep),
                       tracks=tuple(t for t in self.tracks if t.video_id in keep))

    def frame_path(self, video: Video, frame_index: int) -> Path:
        """Absolute path of frame `frame_index` of `video`."""
        return self.root / FRAMES_DIR / video.file_names[frame_index]


# ---------------------------------------------------------------------------------------------------------
# Field checks. Each takes the file, a label of the item ("video 7", "annotation 12") and raises YtvisError.

def _field(raw: Mapping, key: str, file: Path, item: str) -> Any:
    """raw[key], or YtvisError naming the missing key."""
    if not isinstance(raw, Mapping):
        raise YtvisError(file, item, key, f"expected an object, got {type(raw).__name__}")
    try:
        return raw[key]
    except KeyError:
        raise YtvisError(file, item, key, "missing key") from None


def _int(value: Any, file: Path, item: str, key: str, low: int, high: int) -> int:
    """An integer (not bool) in [low, high]."""
    if type(value) is not int:
        raise YtvisError(file, item, key, f"expected an integer, got {_short(value)}")
    if not low <= value <= high:
        raise YtvisError(file, item, key, f"expected an integer in [{low}, {high}], got {_short(value)}")
    return value


def _id(value: Any, file: Path, item: str, key: str) -> int:
    """An id: an integer in [0, MAX_ID] (int64; not negative, not bool)."""
    return _int(value, file, item, key, 0, MAX_ID)


def _side(value: Any, file: Path, item: str, key: str) -> int:
    """A frame width or height: an integer in [1, MAX_SIDE]."""
    return _int(value, file, item, key, 1, MAX_SIDE)


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value for an error message, cut to `limit` characters (input may be huge or deeply nested)."""
    if isinstance(value, int) and abs(value) >= 10**limit:
        return f"an integer of {limit}+ digits"
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= limit else text[:limit] + "..."


# Unicode categories that are not text: controls (incl. NUL), format (e.g. right-to-left override), lone
# surrogates (not UTF-8), private use, unassigned, line and paragraph separators.
_NOT_TEXT = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _text(value: Any, file: Path, item: str, key: str, empty: bool = False) -> str:
    """A string of plain UTF-8 text (no control, format or surrogate characters); non-empty unless `empty`."""
    if type(value) is not str or not (value or empty):
        raise YtvisError(file, item, key, f"expected a{'' if empty else ' non-empty'} string, got {_short(value)}")
    if not (value.isascii() and value.isprintable()) and any(unicodedata.category(c) in _NOT_TEXT for c in value):
        raise YtvisError(file, item, key, f"{_short(value)} holds control, format or surrogate characters")
    return value


def _safe_file_name(name: Any, file: Path, item: str, key: str) -> str:
    """A relative POSIX path that stays inside the frames folder (no absolute path, no '..', no backslash),
    printable UTF-8 text no longer than the file system allows (components NAME_MAX_BYTES, all PATH_MAX_BYTES)."""
    _text(name, file, item, key)
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise YtvisError(file, item, key, f"{_short(name)} is absolute or not a POSIX path; file names must be "
                                          f"relative to {FRAMES_DIR}/ and stay inside the dataset root")
    parts = name.split("/")
    if ".." in parts or "." in parts or "" in parts:
        raise YtvisError(file, item, key, f"{_short(name)} has a '..', '.' or empty component; file names must "
                                          f"stay inside {FRAMES_DIR}/ of the dataset root")
    if len(name.encode()) > PATH_MAX_BYTES or max(len(p.encode()) for p in parts) > NAME_MAX_BYTES:
        raise YtvisError(file, item, key, f"{_short(name)} is too long (at most {PATH_MAX_BYTES} bytes, "
                                          f"{NAME_MAX_BYTES} per folder or file name)")
    return name


_RLE_ALPHABET = bytes(range(48, 48 + 64))  # pycocotools writes 6 bits per character as chr(48 + x)
_RLE_LAST_MAX = chr(48 + 31)  # a value's last character has the continuation bit 0x20 clear


def _rle(seg: Any, height: int, width: int, file: Path, item: str, key: str) -> Rle:
    """Cheap RLE check: dict with size == [height, width]; counts a str in the pycocotools alphabet whose last
    character ends a value, or a list of non-negative ints summing to height*width."""
    if type(seg) is not dict:
        raise YtvisError(file, item, key, f"expected an RLE object or null, got {type(seg).__name__} "
                                          f"(polygons are not supported)")
    size, counts = seg.get("size"), seg.get("counts")
    if size is None or counts is None:
        raise YtvisError(file, item, key, "RLE needs 'size' and 'counts'")
    if size != [height, width]:
        raise YtvisError(file, item, key, f"RLE size {_short(size)} differs from the video's [height, width] "
                                          f"[{height}, {width}]")
    if type(counts) is str:
        try:
            foreign = counts.encode("ascii").translate(None, _RLE_ALPHABET)  # characters outside the alphabet
        except UnicodeEncodeError:
            foreign = b"?"
        if not counts or foreign or counts[-1] > _RLE_LAST_MAX:
            raise YtvisError(file, item, key, "compressed RLE counts are not a valid pycocotools string")
        return Rle((height, width), counts)
    if type(counts) is np.ndarray:  # digits only (`_lift_count_lists`): non-negative, maybe saturated int64
        if counts.size and counts.max() > height * width or int(counts.sum()) != height * width:
            raise YtvisError(file, item, key, f"uncompressed RLE counts sum to {int(counts.sum())}, expected "
                                              f"height*width = {height * width}")
        return Rle((height, width), counts)
    if type(counts) is list:
        if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0):  # bool is not int here
            raise YtvisError(file, item, key, "uncompressed RLE counts must be non-negative integers")
        total = sum(counts)
        if total != height * width:
            raise YtvisError(file, item, key, f"uncompressed RLE counts sum to {_short(total)}, expected "
                                              f"height*width = {height * width}")
        return Rle((height, width), counts)
    raise YtvisError(file, item, key, f"RLE counts must be a string or a list, got {type(counts).__name__}")


def _number(value: Any) -> bool:
    """Whether `value` is a finite int or float (not bool); huge ints are finite but compared, not converted."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _box(box: Any, height: int, width: int, file: Path, item: str, key: str) -> BoxXYWH:
    """[x, y, w, h] with finite numbers, w, h >= 0, inside the (height, width) frame up to BOX_SLACK pixels."""
    if type(box) is not list or len(box) != 4:
        raise YtvisError(file, item, key, f"expected [x, y, w, h], got {_short(box)}")
    if not all(_number(v) for v in box):
        raise YtvisError(file, item, key, f"expected finite numbers in [x, y, w, h], got {_short(box)}")
    x, y, w, h = box
    if w < 0 or h < 0:
        raise YtvisError(file, item, key, f"negative box width or height in {_short(box)}")
    # Compared before any sum: a huge int plus a float would overflow.
    if (not all(-BOX_SLACK <= v <= MAX_SIDE + BOX_SLACK for v in box)
            or x + w > width + BOX_SLACK or y + h > height + BOX_SLACK):
        raise YtvisError(file, item, key, f"box {_short(box)} lies outside the {width}x{height} frame")
    return (x, y, w, h)


def _area(area: Any, height: int, width: int, file: Path, item: str, key: str) -> float:
    """A finite number in [0, height*width] (a mask's pixel count)."""
    if not _number(area) or not 0 <= area <= height * width:
        raise YtvisError(file, item, key, f"expected a pixel count in [0, {height * width}], got {_short(area)}")
    return area


# ---------------------------------------------------------------------------------------------------------
# Records.

def _category(raw: Any, file: Path, index: int) -> Category:
    """One categories[] entry."""
    item = f"categories[{index}]"
    cid = _id(_field(raw, "id", file, item), file, item, "id")
    item = f"category {cid}"
    name = _text(_field(raw, "name", file, item), file, item, "name")
    supercategory = _text(raw.get("supercategory", ""), file, item, "supercategory", empty=True)
    return Category(cid, name, supercategory)


def _video(raw: Any, file: Path, index: int) -> Video:
    """One videos[] entry: positive sizes, length == len(file_names), safe and distinct file names."""
    item = f"videos[{index}]"
    vid = _id(_field(raw, "id", file, item), file, item, "id")
    item = f"video {vid}"
    width = _side(_field(raw, "width", file, item), file, item, "width")
    height = _side(_field(raw, "height", file, item), file, item, "height")
    length = _int(_field(raw, "length", file, item), file, item, "length", 1, MAX_ID)
    names = _field(raw, "file_names", file, item)
    if type(names) is not list:
        raise YtvisError(file, item, "file_names", f"expected a list, got {type(names).__name__}")
    if len(names) != length:
        raise YtvisError(file, item, "file_names", f"{len(names)} file names, but length is {length}")
    for t, name in enumerate(names):
        _safe_file_name(name, file, item, f"file_names[{t}]")
    if len(set(names)) != len(names):
        raise YtvisError(file, item, "file_names", "the same frame is listed twice")
    return Video(vid, width, height, tuple(names))


def _frame_list(raw: Mapping, key: str, video: Video, file: Path, item: str) -> list:
    """raw[key]: a list with one entry per frame of `video`."""
    value = _field(raw, key, file, item)
    if type(value) is not list:
        raise YtvisError(file, item, key, f"expected a list, got {type(value).__name__}")
    if len(value) != video.length:
        raise YtvisError(file, item, key, f"{len(value)} entries, but video {video.id} has {video.length} frames")
    return value


def _track(raw: Any, file: Path, index: int, videos: Mapping[int, Video], category_ids: set[int],
           masks: bool = True) -> Track:
    """One annotations[] entry: known video and category, per-frame lists of the video's length, nulls aligned.
    Without `masks` (a boxes-only dataset) `segmentations` may be absent (else all null), `bboxes` say where
    the object is, and `areas` may be absent (then the box areas)."""
    item = f"annotations[{index}]"
    aid = _id(_field(raw, "id", file, item), file, item, "id")
    item = f"annotation {aid}"
    vid = _id(_field(raw, "video_id", file, item), file, item, "video_id")
    video = videos.get(vid)
    if video is None:
        raise YtvisError(file, item, "video_id", f"no video has id {vid}")
    item = f"annotation {aid} (video {vid})"
    cid = _id(_field(raw, "category_id", file, item), file, item, "category_id")
    if cid not in category_ids:
        raise YtvisError(file, item, "category_id", f"unknown category id {cid}; categories[] has "
                                                    f"{sorted(category_ids)}")
    iscrowd = _field(raw, "iscrowd", file, item)
    if iscrowd not in (0, 1) or type(iscrowd) is not int:
        raise YtvisError(file, item, "iscrowd", f"expected 0 or 1, got {_short(iscrowd)}")
    for key in ("height", "width"):
        if key in raw and raw[key] != getattr(video, key):
            raise YtvisError(file, item, key, f"{_short(raw[key])} differs from video {vid}'s {getattr(video, key)}")
    nulls = [None] * video.length
    given_areas = masks or "areas" in raw
    lists = {"segmentations": _frame_list(raw, "segmentations", video, file, item) if masks or "segmentations" in raw
             else nulls,
             "bboxes": _frame_list(raw, "bboxes", video, file, item),
             "areas": _frame_list(raw, "areas", video, file, item) if given_areas else nulls}
    presence = "segmentations" if masks else "bboxes"  # the list that says where the object is
    h, w = video.height, video.width
    segs: list[Rle | None] = []
    boxes: list[BoxXYWH | None] = []
    areas: list[float | None] = []
    for t, (seg, box, area) in enumerate(zip(lists["segmentations"], lists["bboxes"], lists["areas"])):
        entries = {"segmentations": seg, "bboxes": box, "areas": area if given_areas else box}
        if entries[presence] is None:
            stray = next((key for key, value in entries.items() if value is not None), None)
            if stray:
                raise YtvisError(file, item, f"{stray}[{t}]", f"present where {presence}[t] is null")
            segs.append(None), boxes.append(None), areas.append(None)
            continue
        absent = next((key for key, value in entries.items() if value is None and (masks or key != "segmentations")),
                      None)
        if absent:
            raise YtvisError(file, item, f"{absent}[{t}]", f"null where {presence}[t] is present")
        segs.append(_rle(seg, h, w, file, item, f"segmentations[{t}]") if masks else None)
        boxes.append(_box(box, h, w, file, item, f"bboxes[{t}]"))
        areas.append(_area(area, h, w, file, item, f"areas[{t}]") if given_areas else boxes[-1][2] * boxes[-1][3])
    return Track(aid, vid, cid, iscrowd, tuple(segs), tuple(boxes), tuple(areas))


def _has_masks(annotations: Any) -> bool:
    """Whether `annotations` is a list in which some annotation has a non-null segmentation (else the dataset is
    boxes-only)."""
    return isinstance(annotations, list) and any(isinstance(raw, Mapping) and isinstance(raw.get("segmentations"), list)
               and any(seg is not None for seg in raw["segmentations"]) for raw in annotations)


def _unique(ids: Iterable[int], file: Path, what: str) -> None:
    """Raise on the first id that appears twice."""
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise YtvisError(file, f"{what} {i}", "id", f"duplicate {what} id {i}")
        seen.add(i)


def check_frame_files(dataset: YtvisDataset, progress: bool = False) -> None:
    """Every frame of `dataset` exists (one os.scandir per frame folder, not one stat per frame) and is a JPEG of
    the video's size by its header (`frame_size`: a JPEG's SOF segment or a PNG's IHDR, nothing decoded)."""
    file, videos = dataset.annotation_file, dataset.videos
    frames_dir = dataset.root / FRAMES_DIR
    if not frames_dir.is_dir():
        raise YtvisError(file, "dataset", "file_names", f"frames folder {frames_dir} does not exist")
    listing: dict[str, set[str] | None] = {}
    for video in tqdm(list(videos), desc="frame files", unit="video", disable=not progress):
        for t, name in enumerate(video.file_names):
            folder, base = posixpath.split(name)
            if folder not in listing:
                try:
                    with os.scandir(frames_dir / folder) as it:
                        listing[folder] = {e.name for e in it}
                except (FileNotFoundError, NotADirectoryError):
                    listing[folder] = None
            present = listing[folder]
            if present is None or base not in present:
                raise YtvisError(file, f"video {video.id}", f"file_names[{t}]",
                                 f"frame file {frames_dir / name} does not exist")
            try:
                size = frame_size(frames_dir / name)
            except (ValueError, OSError) as e:
                raise YtvisError(file, f"video {video.id}", f"file_names[{t}]", str(e)) from None
            if size != (video.height, video.width):
                raise YtvisError(file, f"video {video.id}", f"file_names[{t}]",
                                 f"frame file {frames_dir / name} is {size[1]}x{size[0]} (by its header), "
                                 f"the video's width x height is {video.width}x{video.height}")


_COUNTS_KEY = b'"counts"'
_COUNT_CHARS = b"0123456789, "
_LIFTED = "\x00lifted "  # a placeholder no valid RLE string holds (NUL is outside the pycocotools alphabet)


def _lift_count_lists(data: bytes) -> tuple[bytes, list[np.ndarray]]:
    """`data` with every `"counts": [n, n, ...]` list of plain decimal integers replaced by a placeholder string
    "\\u0000lifted k", and the lists parsed by numpy (int64 (N_k,), in order k). Building 100 M Python ints is
    most of a full parse of uncompressed RLE; numpy parses the digits in C. Lists holding anything else
    (signs, floats, true, nesting, empty items) stay in the text for the json parser and the field checks."""
    pieces: list[bytes] = []
    lifted: list[np.ndarray] = []
    done = 0
    at = data.find(_COUNTS_KEY)
    while at >= 0:
        start = at + len(_COUNTS_KEY)
        head = data[start:start + 8].lstrip()
        if head[:1] == b":" and head[1:].lstrip()[:1] == b"[":
            start = data.index(b"[", start)
            end = data.find(b"]", start)
            body = data[start + 1:end] if end > start + 1 else b""
            if body and not body.translate(None, _COUNT_CHARS):
                try:  # an item of several numbers ("1 2") or none (",,") stops numpy before the end
                    counts = np.fromstring(body, dtype=np.int64, sep=",")
                except ValueError:
                    counts = None
                if counts is not None and counts.size == body.count(b",") + 1:
                    pieces += [data[done:start], b'"\\u0000lifted %d"' % len(lifted)]
                    lifted.append(counts)
                    done = end + 1
        at = data.find(_COUNTS_KEY, max(done, at + 1))
    pieces.append(data[done:])
    return b"".join(pieces), lifted


def _put_back_counts(raw: Any, lifted: list[np.ndarray]) -> bool:
    """Put the lifted count lists back where their placeholders are (annotations[*].segmentations[*].counts);
    False unless every placeholder was found there exactly once (a '"counts"' elsewhere in the text)."""
    used = 0
    annotations = raw.get("annotations") if isinstance(raw, dict) else None
    for ann in annotations if isinstance(annotations, list) else ():
        segs = ann.get("segmentations") if isinstance(ann, dict) else None
        for seg in segs if isinstance(segs, list) else ():
            counts = seg.get("counts") if isinstance(seg, dict) else None
            if type(counts) is str and counts.startswith(_LIFTED):
                k = int(counts[len(_LIFTED):])
                if k != used:
                    return False
                seg["counts"] = lifted[k]
                used += 1
    return used == len(lifted)


def read_json(file: Path) -> tuple[Any, str]:
    """The parsed json of `file` and the sha256 of its bytes. Parsed by orjson, and on a parse error by the
    stdlib parser, which reads NaN, Infinity, 1e400 and huge integers (the field checks then name the field)
    or fails with its own message. Raises YtvisError naming the file."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise YtvisError(file, "dataset", "-", "annotation file does not exist") from None
    except OSError as e:
        raise YtvisError(file, "dataset", "-", f"cannot read the annotation file ({e})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        text, lifted = _lift_count_lists(data)
        raw = orjson.loads(text)
        if _put_back_counts(raw, lifted):
            return raw, sha256
        return orjson.loads(data), sha256
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data), sha256
    except RecursionError:
        raise YtvisError(file, "dataset", "-", "not valid JSON: nested deeper than the parser allows") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of 4300+ digits
        raise YtvisError(file, "dataset", "-", f"not valid JSON ({e})") from None


def validate_ytvis(raw: Any, root: Path, file: Path, sha256: str, masks: bool,
                   progress: bool = False) -> YtvisDataset:
    """The YtvisDataset of parsed json `raw` (read from `file`, whose bytes have digest `sha256`; frames under
    `root`), every field checked; with `masks` False the tracks are read as boxes-only (segmentations absent or
    ignored). Raises YtvisError."""
    if not isinstance(raw, dict):
        raise YtvisError(file, "dataset", "-", f"expected a JSON object, got {type(raw).__name__}")
    lists = {}
    for key in ("videos", "annotations", "categories"):
        value = _field(raw, key, file, "dataset")
        if type(value) is not list:
            raise YtvisError(file, "dataset", key, f"expected a list, got {type(value).__name__}")
        lists[key] = value

    categories = [_category(c, file, i) for i, c in enumerate(lists["categories"])]
    _unique((c.id for c in categories), file, "category")
    videos = [_video(v, file, i) for i, v in enumerate(lists["videos"])]
    _unique((v.id for v in videos), file, "video")
    video_by_id = {v.id: v for v in videos}
    category_ids = {c.id for c in categories}
    tracks = [_track(a, file, i, video_by_id, category_ids, masks)
              for i, a in enumerate(tqdm(lists["annotations"], desc="annotations", unit="track",
                                         disable=not progress))]
    _unique((t.id for t in tracks), file, "annotation")
    return YtvisDataset(root=root, annotation_file=file,
                        videos=tuple(sorted(videos, key=lambda v: v.id)),
                        tracks=tuple(sorted(tracks, key=lambda t: t.id)),
                        categories=tuple(sorted(categories, key=lambda c: c.id)), has_masks=masks,
                        sha256=sha256, info=raw.get("info"), licenses=raw.get("licenses"))


def load_ytvis(root: str | os.PathLike, annotation_file: str | os.PathLike = "train.json",
               check_files: bool = True, progress: bool = False) -> YtvisDataset:
    """Load and validate `<root>/<annotation_file>` (an absolute annotation_file is used as is). With
    check_files, every frame must exist under `<root>/JPEGImages`. Raises YtvisError on any malformed input."""
    root = Path(root)
    file = root / annotation_file
    raw, sha256 = read_json(file)
    masks = isinstance(raw, dict) and _has_masks(raw.get("annotations"))
    dataset = validate_ytvis(raw, root, file, sha256, masks, progress)
    if check_files:
        check_frame_files(dataset, progress)
    return dataset


# ---------------------------------------------------------------------------------------------------------
# Writing and decoding.

def _rle_json(rle: Rle | None) -> dict | None:
    """An Rle back to its json form."""
    if rle is None:
        return None
    return {"size": list(rle.size), "counts": rle.counts.tolist() if isinstance(rle.counts, np.ndarray) else rle.counts}


def compressed_counts(rles: list[Rle]) -> list[str]:
    """Compressed counts strings of `rles`, all of one frame size; uncompressed counts are encoded with
    pycocotools (in one call), compressed ones returned as they are."""
    out = [r.counts if isinstance(r.counts, str) else None for r in rles]
    as_lists = [i for i, c in enumerate(out) if c is None]
    if as_lists:
        height, width = rles[as_lists[0]].size
        encoded = mask_utils.frPyObjects([{"size": [height, width], "counts": rles[i].counts} for i in as_lists],
                                         height, width)
        for i, enc in zip(as_lists, encoded):
            out[i] = enc["counts"].decode("ascii")
    return out  # type: ignore[return-value]


def _segmentations_json(segmentations: tuple[Rle | None, ...], compress: bool) -> list[dict | None]:
    """A track's segmentations in json form, with uncompressed counts compressed when `compress`."""
    if not compress:
        return [_rle_json(s) for s in segmentations]
    present = [t for t, s in enumerate(segmentations) if s is not None]
    out: list[dict | None] = [None] * len(segmentations)
    if present:
        counts = compressed_counts([segmentations[t] for t in present])  # type: ignore[misc]
        for t, c in zip(present, counts):
            out[t] = {"size": list(segmentations[t].size), "counts": c}  # type: ignore[union-attr]
    return out


def ytvis_json(dataset: YtvisDataset, video_ids: Iterable[int], compress: bool = True) -> dict:
    """The YouTube-VIS json of the subset `video_ids` (all categories, the tracks of those videos). With
    `compress`, uncompressed RLE is written compressed (same masks, about 4x smaller, faster to parse)."""
    keep = set(video_ids)
    unknown = keep - {v.id for v in dataset.videos}
    if unknown:
        raise KeyError(f"{dataset.annotation_file}: video ids {sorted(unknown)[:10]} are not in the dataset")
    out: dict[str, Any] = {}
    if dataset.info is not None:
        out["info"] = dataset.info
    if dataset.licenses is not None:
        out["licenses"] = dataset.licenses
    out["videos"] = [{"id": v.id, "width": v.width, "height": v.height, "length": v.length,
                      "file_names": list(v.file_names)} for v in dataset.videos if v.id in keep]
    videos = dataset.video_by_id
    out["annotations"] = [{"id": t.id, "video_id": t.video_id, "category_id": t.category_id,
                           "iscrowd": t.iscrowd, "height": videos[t.video_id].height,
                           "width": videos[t.video_id].width,
                           "segmentations": _segmentations_json(t.segmentations, compress),
                           "bboxes": [None if b is None else list(b) for b in t.bboxes_xywh],
                           "areas": list(t.areas)} for t in dataset.tracks if t.video_id in keep]
    out["categories"] = [{"id": c.id, "name": c.name, "supercategory": c.supercategory}
                         for c in dataset.categories]
    return out


def write_ytvis(dataset: YtvisDataset, video_ids: Iterable[int], path: str | os.PathLike,
                compress: bool = True) -> None:
    """Write the subset `video_ids` in YouTube-VIS format to `path`, atomically (temporary file + rename)."""
    write_json_atomic(path, ytvis_json(dataset, video_ids, compress), indent=None)


def compressed_rle_stats(counts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode pycocotools compressed RLE strings (vectorised over the batch) to (total pixels, smallest run) per
    string, both int64 arrays of shape (len(counts),). Strings must already pass `load_ytvis`'s cheap check
    (alphabet chr(48)..chr(111), last character ends a value)."""
    n = len(counts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = np.fromiter((len(s) for s in counts), np.int64, n)
    chars = np.frombuffer("".join(counts).encode("ascii"), np.uint8) - np.uint8(48)  # (C,) 6-bit groups
    value_end = np.flatnonzero(chars < 32)  # (V,) a value ends at a character without continuation bit 0x20
    value_start = np.r_[0, value_end[:-1] + 1]
    value_len = value_end - value_start + 1
    if value_len.max() > 12:
        raise ValueError("compressed RLE value longer than 12 characters")
    values = (chars[value_start] & 0x1F).astype(np.int64)  # (V,)
    for k in range(1, int(value_len.max())):  # values are mostly 1-2 characters: few, shrinking passes
        longer = np.flatnonzero(value_len > k)
        values[longer] |= (chars[value_start[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = (chars[value_end] & 0x10) != 0  # sign bit of the last group: extend it
    values -= negative.astype(np.int64) << (5 * value_len)
    # Values of string i: positions [first_value[i], first_value[i + 1]) (strings end on a value end).
    char_start = np.r_[0, np.cumsum(lengths)[:-1]]
    first_value = np.searchsorted(value_end, char_start)  # (n,)
    values_per_string = np.diff(np.r_[first_value, value_end.size])
    pos = np.arange(values.size) - np.repeat(first_value, values_per_string)  # index m within its string
    # counts[m] = values[m] + counts[m-2] for m > 2: two running sums per string (even m >= 2, odd m >= 1).
    counts_out = values
    for chain in ((pos & 1 == 0) & (pos >= 2), pos & 1 == 1):
        cs = np.cumsum(np.where(chain, values, 0))
        before = np.r_[0, cs][first_value]  # running sum before each string's first value
        counts_out = np.where(chain, cs - np.repeat(before, values_per_string), counts_out)
    totals = np.add.reduceat(counts_out, first_value)
    smallest = np.minimum.reduceat(counts_out, first_value)
    return totals, smallest


# ---------------------------------------------------------------------------------------------------------
# Frame files.

_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a JPEG (its SOF segment, found by walking the marker segments from the start) or a PNG
    (its IHDR chunk), from the header alone: nothing is decoded. ValueError naming the file when it is neither,
    or its header is cut short or corrupt."""
    with open(path, "rb") as f:
        start = f.read(8)
        if start == _PNG_SIGNATURE:
            ihdr = f.read(16)  # length (4), b"IHDR", width (4), height (4)
            if len(ihdr) < 16 or ihdr[4:8] != b"IHDR":
                raise ValueError(f"{path}: truncated or corrupt PNG header (no IHDR chunk)")
            return int.from_bytes(ihdr[12:16], "big"), int.from_bytes(ihdr[8:12], "big")
        if start[:2] != b"\xff\xd8":
            raise ValueError(f"{path}: neither a JPEG (start-of-image marker FFD8) nor a PNG file")
        f.seek(2)
        while True:
            byte = f.read(1)
            if not byte:
                raise ValueError(f"{path}: truncated JPEG header (the file ends before the frame header)")
            if byte != b"\xff":
                raise ValueError(f"{path}: corrupt JPEG header (expected a marker at byte {f.tell() - 1})")
            marker = f.read(1)
            while marker == b"\xff":  # fill bytes before a marker
                marker = f.read(1)
            if not marker or marker[0] in (0xD9, 0xDA):
                raise ValueError(f"{path}: truncated or corrupt JPEG (no frame header before the image data)")
            if marker[0] in _STANDALONE_MARKERS:
                continue
            head = f.read(2)
            if len(head) < 2:
                raise ValueError(f"{path}: truncated JPEG header")
            length = int.from_bytes(head, "big")
            if length < 2:
                raise ValueError(f"{path}: corrupt JPEG header (segment length {length})")
            if marker[0] in _SOF_MARKERS:
                sof = f.read(5)  # precision (1 byte), height, width (2 bytes each)
                if len(sof) < 5:
                    raise ValueError(f"{path}: truncated JPEG frame header")
                return int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
            f.seek(length - 2, os.SEEK_CUR)


def read_image(path: str | os.PathLike, what: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file; `what` (e.g. "video 7 frame 3") goes into the errors. A JPEG must
    end with its end-of-image marker FFD9 (trailing NUL padding allowed): cv2.imread decodes a truncated JPEG with
    only a "Premature end of JPEG file" warning and grey rows (cv2.imdecode of OpenCV 5.1 refuses it, without
    saying why). The check looks at bytes already read: a 720p JPEG
    takes 5.5 ms, cv2.imread alone 5.3 ms, the reader before it (imread, numpy flip) 9.6 ms (one core,
    benchmarks/read_frame.py)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: {what} is missing") from None
    if data[:2].tobytes() == b"\xff\xd8":
        tail = data[-2:].tobytes()
        if tail != b"\xff\xd9":
            tail = np.trim_zeros(data, "b")[-2:].tobytes()
        if tail != b"\xff\xd9":
            raise ValueError(f"{path}: {what} is a truncated JPEG (it ends without the end-of-image marker "
                             f"FFD9); copy the file again from the source")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError(f"{path}: {what} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # same bytes as bgr[..., ::-1], without numpy's strided copy


def read_frame(path: Path, video_id: int, frame_index: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one JPEG frame; a missing, truncated, undecodable or wrongly sized file is an error
    naming the file, the video and the frame (`read_image`)."""
    rgb = read_image(path, f"video {video_id} frame {frame_index}")
    if rgb.shape[:2] != (height, width):
        raise ValueError(f"{path}: video {video_id} frame {frame_index} is {rgb.shape[1]}x{rgb.shape[0]}, "
                         f"train.json says {width}x{height}")
    return rgb


def check_frames_decode(dataset: YtvisDataset, progress: bool = False) -> None:
    """Decode every frame of `dataset` with `read_frame` (split --check-frames); the first bad one raises
    YtvisError naming the file, the video and the frame."""
    for video in tqdm(dataset.videos, desc="decode frames", unit="video", disable=not progress):
        for t in range(video.length):
            try:
                read_frame(dataset.frame_path(video, t), video.id, t, video.height, video.width)
            except (ValueError, FileNotFoundError) as e:
                raise YtvisError(dataset.annotation_file, f"video {video.id}", f"file_names[{t}]", str(e)) from None
