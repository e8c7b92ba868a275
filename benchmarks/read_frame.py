"""Time the one frame reader (pipeline.ytvis.read_frame: the bytes read once, the JPEG end-of-image check,
cv2.imdecode, the size check, BGR -> RGB) against a bare cv2.imread and the reader it replaced (cv2.imread and
a numpy channel flip, which decodes truncated JPEGs into grey rows), and the split's header check
(pipeline.ytvis.frame_size) against a full decode, on a 1280x720 JPEG (quality 90) of smooth texture and noise.

    python benchmarks/read_frame.py [--repeats 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.ytvis import frame_size, read_frame

HEIGHT, WIDTH = 720, 1280


def write_test_jpeg(path: Path) -> None:
    """A 720p JPEG with gradients, a sine pattern and noise (about 150 KB at quality 90)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([(xx * 0.2 + yy * 0.1) % 255, np.sin(xx / 30) * 100 + 120, (yy * 0.3) % 255], -1)
    noise = np.random.default_rng(0).integers(0, 30, image.shape)
    image = cv2.GaussianBlur((image + noise).clip(0, 255).astype(np.uint8), (3, 3), 0)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def best_ms(call: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` wall times of `call`, in milliseconds (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1e3 * min(times)


def main() -> None:
    """Print (and optionally write) the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.jpg"
        write_test_jpeg(path)
        out = {"jpeg_bytes": path.stat().st_size,
               "cv2_imread_ms": best_ms(lambda: cv2.imread(str(path), cv2.IMREAD_COLOR), args.repeats),
               "previous_reader_ms": best_ms(lambda: np.ascontiguousarray(cv2.imread(str(path))[..., ::-1]),
                                             args.repeats),
               "read_frame_ms": best_ms(lambda: read_frame(path, 0, 0, HEIGHT, WIDTH), args.repeats),
               "frame_size_ms": best_ms(lambda: frame_size(path), args.repeats)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
