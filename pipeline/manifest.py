"""The dataset's manifest (`results/manifest.json`): train.json parsed and validated once, without masks.

Rule manifest writes it; the flow, flow_quality, affinity and frame_index jobs read it instead of re-parsing
the whole train.json (about 12 s and 4 GiB per job with uncompressed RLE, 71 flow and affinity jobs on
YouTube-VIS). It depends on train.json alone, not on the split's settings, so editing `split` reruns no flow.
It is a boxes-only YouTube-VIS 2019 json (`videos`, `categories`, `annotations` with `bboxes` and `areas`, no
`segmentations`), read back by the same field checks as train.json (pipeline.ytvis.validate_ytvis): a
hand-edited or truncated manifest is a YtvisError naming the manifest, the item and the field. Beside them:
- `format`: MANIFEST_FORMAT; readers refuse any other;
- `source`: {`file`, `sha256`} of the train.json it came from (its identity: any edit of train.json gives
  another manifest, so everything downstream reruns, as when the jobs read train.json itself);
- `has_masks`: whether train.json carries masks (False for a boxes-only dataset, pipeline/boxes_csv.py).
Masks stay in train.json; the jobs that use them read rule split's outputs (train_val_coco.json).

CLI (rule manifest): python -m pipeline.manifest --root ROOT [--annotation-file train.json] --out results/manifest.json
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from pipeline.io import setup_logging, write_bytes_atomic
from pipeline.ytvis import YtvisDataset, YtvisError, load_ytvis, read_json, validate_ytvis

MANIFEST_FORMAT = 1


def manifest_json(dataset: YtvisDataset) -> dict[str, Any]:
    """The manifest of a validated train.json: everything but the masks, and the file's identity."""
    return {
        "format": MANIFEST_FORMAT,
        "source": {"file": str(dataset.annotation_file), "sha256": dataset.sha256},
        "has_masks": dataset.has_masks,
        "categories": [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in dataset.categories],
        "videos": [{"id": v.id, "width": v.width, "height": v.height, "length": v.length,
                    "file_names": list(v.file_names)} for v in dataset.videos],
        "annotations": [{"id": t.id, "video_id": t.video_id, "category_id": t.category_id, "iscrowd": t.iscrowd,
                         "bboxes": [None if b is None else list(b) for b in t.bboxes_xywh],
                         "areas": list(t.areas)} for t in dataset.tracks],
    }


def write_manifest(path: str | os.PathLike, dataset: YtvisDataset) -> None:
    """Write the manifest of `dataset` to `path` (temporary file + rename)."""
    write_bytes_atomic(path, orjson.dumps(manifest_json(dataset)))


def load_manifest(path: str | os.PathLike, root: str | os.PathLike) -> YtvisDataset:
    """The dataset of the manifest at `path`, frames under `root`/JPEGImages, without masks (segmentations all
    None; `has_masks` and `sha256` are train.json's, `annotation_file` the manifest). Any malformed field is a
    YtvisError naming the manifest, the item and the field."""
    file = Path(path)
    raw, _ = read_json(file)
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise YtvisError(file, "manifest", "format", f"expected manifest format {MANIFEST_FORMAT}, found "
                                                     f"{found!r}; rerun rule manifest")
    source = raw.get("source")
    if (not isinstance(source, dict) or type(source.get("file")) is not str
            or type(source.get("sha256")) is not str or len(source["sha256"]) != 64):
        raise YtvisError(file, "manifest", "source", "expected {file, sha256} of the train.json it came from")
    has_masks = raw.get("has_masks")
    if type(has_masks) is not bool:
        raise YtvisError(file, "manifest", "has_masks", f"expected true or false, got {has_masks!r}")
    return replace(validate_ytvis(raw, Path(root), file, source["sha256"], masks=False), has_masks=has_masks)


def main(argv: list[str] | None = None) -> int:
    """CLI: validate train.json (fields and frame files) and write its manifest; nothing when it is invalid."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="YouTube-VIS folder with train.json and JPEGImages/")
    parser.add_argument("--annotation-file", default="train.json", help="relative to --root")
    parser.add_argument("--out", required=True, type=Path, help="results/manifest.json")
    args = parser.parse_args(argv)
    log = setup_logging()
    try:
        dataset = load_ytvis(args.root, args.annotation_file, check_files=True, progress=True)
    except YtvisError as e:
        log.error("invalid dataset, nothing written: %s", e)
        return 1
    write_manifest(args.out, dataset)
    log.info("%s: %d videos, %d tracks, %d categories, masks: %s", args.out, len(dataset.videos),
             len(dataset.tracks), len(dataset.categories), dataset.has_masks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
