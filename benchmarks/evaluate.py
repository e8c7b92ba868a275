"""Time evaluation's post-processing per frame (masks to COCO results) at 1280x720 with 100 detections.

Routes taking turns in one run, CPU time of the whole process (`time.process_time`, every thread; wall time
beside it, which is what counts for the device route on a GPU):
  before     the route of commit e4d5726: the (D, H, W) bool masks copied to the host, `astype(uint8)`,
             `np.asfortranarray(transpose)`, one `pycocotools.mask.encode` call, the results list serialised
             with `json.dumps` at the end.
  after      model.evaluate as it runs on a CPU-only machine: `to_host` (column-major layout by OpenCV's
             transpose) and `ResultsFile.add` (RLE per mask and a JSON line per result, in its thread).
  host       what the host still does when the masks come from a GPU: the positions where each mask's
             column-major pixels change are found there (`mask_runs`, the masks never reach the host), so the
             host turns them into run lengths, compresses them with pycocotools and writes the results; the
             device's share (and its copy to the host) is measured with --device cuda.
  buffer     the route the issue proposed: the layout made on the device, the host encoding a ready Fortran
             buffer with pycocotools' encode (a call per mask) and writing the results.
Also the parts (astype, asfortranarray, OpenCV/torch layout, mask_runs on the CPU, encode), and whether pycocotools' encode holds
the GIL: the longest a sleeping main thread waits to wake while another thread encodes a frame, in one call
and one call per mask.

Masks are what the network's paste makes: smooth random logits at 1/4 resolution, upsampled bilinearly to
1280x720 and thresholded at 0.5 (blobs of 20-400 px across).

    python benchmarks/evaluate.py [--rounds 5] [--detections 100] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not benchmarks/ (its model.py)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pycocotools.mask as mask_utils  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.evaluate import HostDetections, ResultsFile, column_major, fortran_masks, mask_runs, to_host  # noqa: E402
from model.network import Detections  # noqa: E402

HEIGHT, WIDTH = 720, 1280
CATEGORY_IDS = list(range(1, 41))


def detections(count: int, device: str, seed: int = 0) -> Detections:
    """`count` detections of one 1280x720 frame: blob masks pasted as the network does, boxes around them."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(HEIGHT // 4).float(), torch.arange(WIDTH // 4).float(), indexing="ij")
    cy, cx = torch.rand(count, generator=g) * HEIGHT / 4, torch.rand(count, generator=g) * WIDTH / 4
    radius = 2.5 + torch.rand(count, generator=g) * 47.5  # 1/4 resolution: 10-200 px radius at full size
    wobble = F.interpolate(torch.randn(count, 1, 6, 10, generator=g), size=(HEIGHT // 4, WIDTH // 4),
                           mode="bicubic", align_corners=False)[:, 0]
    dist = ((ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2).sqrt()
    logits = (radius[:, None, None] - dist) / 3 + wobble  # (D, H/4, W/4)
    probs = F.interpolate(logits[:, None].sigmoid(), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    masks = probs[:, 0] > 0.5  # (D, H, W)
    r = 4 * radius
    boxes = torch.stack([4 * cx - r, 4 * cy - r, 4 * cx + r, 4 * cy + r], 1).clamp(min=0)
    return Detections(boxes.to(device), torch.rand(count, generator=g).sort(descending=True).values.to(device),
                      torch.randint(0, len(CATEGORY_IDS), (count,), generator=g).to(device), masks.to(device))


def before(det: Detections, image_id: int) -> bytes:
    """Commit e4d5726's route: host copy, astype, asfortranarray, one encode call; the list dumped at the end."""
    masks = det.masks.cpu().numpy().astype(np.uint8)  # (D, H, W)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    out = []
    for box, score, cls, rle in zip(det.boxes_xyxy.cpu().tolist(), det.scores.cpu().tolist(),
                                    det.classes.cpu().tolist(), rles):
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": image_id, "category_id": int(CATEGORY_IDS[cls]), "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
    return json.dumps(out).encode()


def written(host: HostDetections) -> bytes:
    """The bytes ResultsFile writes for one image (RLE per mask and a JSON line per result, in its thread)."""
    buffer = io.BytesIO()
    with ResultsFile(buffer, CATEGORY_IDS) as out:
        out.add(host)
    return buffer.getvalue()


def timed_ms(fn: Callable[[], Any]) -> tuple[float, float]:
    """CPU milliseconds of the whole process (all threads) and wall milliseconds of one call of `fn`."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return 1000 * (time.process_time() - cpu), 1000 * (time.perf_counter() - wall)


def wake_latency_ms(encode: Callable[[], Any]) -> float:
    """Longest wait of a main thread sleeping 0.5 ms at a time while another thread runs `encode` three times:
    about the length of one call if the call holds the GIL, about 0.5 ms if it releases it."""
    worker = threading.Thread(target=lambda: [encode() for _ in range(3)])
    waits = []
    worker.start()
    while worker.is_alive():
        began = time.perf_counter()
        time.sleep(0.0005)
        waits.append(time.perf_counter() - began)
    worker.join()
    return 1000 * max(waits)


def main() -> None:
    """Time the routes taking turns and print (and optionally save) the per-frame CPU milliseconds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--detections", type=int, default=100)
    ap.add_argument("--device", default="cpu", help="where the masks are (cuda: time the device layout too)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    det = detections(args.detections, args.device)
    lists = (det.boxes_xyxy.cpu().tolist(), det.scores.cpu().tolist(), det.classes.cpu().tolist())
    buffer = HostDetections(1, *lists, column_major(det.masks).cpu().numpy().transpose(2, 1, 0))  # (H, W, D) F
    runs = HostDetections(1, *lists, mask_runs(det.masks))
    if not (json.loads(before(det, 1)) == json.loads(written(to_host(det, 1))) == json.loads(written(buffer))
            == json.loads(written(runs))):
        raise AssertionError("the routes disagree")
    on_cpu = det.masks.cpu()
    routes: dict[str, Callable[[], Any]] = {
        "before": lambda: before(det, 1),
        "after": lambda: written(to_host(det, 1)),
        "host": lambda: written(runs),
        "buffer": lambda: written(buffer),
        "part: astype(uint8)": lambda: on_cpu.numpy().astype(np.uint8),
        "part: asfortranarray(transpose)": lambda: np.asfortranarray(on_cpu.numpy().transpose(1, 2, 0)),
        "part: layout by OpenCV (CPU route)": lambda: fortran_masks(on_cpu),
        "part: layout by torch on the CPU": lambda: column_major(on_cpu),
        "part: mask_runs on the CPU (the GPU route's device share)": lambda: mask_runs(on_cpu),
        "part: encode, one call": lambda: mask_utils.encode(buffer.masks),
        "part: encode, a call per mask": lambda: [mask_utils.encode(buffer.masks[:, :, i:i + 1])
                                                  for i in range(args.detections)],
    }
    if args.device != "cpu":
        routes[f"{args.device}: mask_runs (changes found, copied to the host)"] = lambda: mask_runs(det.masks)
    times: dict[str, list[float]] = {name: [] for name in routes}
    walls: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.rounds):
        for name, fn in routes.items():
            cpu, wall = timed_ms(fn)
            times[name].append(cpu)
            walls[name].append(wall)
    best = {name: min(ms) for name, ms in times.items()}
    median = {name: float(np.median(ms)) for name, ms in times.items()}
    pixels = int(on_cpu.sum())
    report = {"frame": f"{WIDTH}x{HEIGHT}", "detections": args.detections, "mask_pixels_mean": pixels // args.detections,
              "rounds": args.rounds, "cpu_ms_best": best, "cpu_ms_median": median,
              "wall_ms_median": {name: float(np.median(ms)) for name, ms in walls.items()},
              "speedup_cpu_only": best["before"] / best["after"], "speedup_host_with_gpu": best["before"] / best["host"],
              "speedup_buffer": best["before"] / best["buffer"],
              "bytes_to_host": {"masks": int(on_cpu.numel()), "runs": int(runs.masks.mask.nbytes + runs.masks.position.nbytes)},
              "gil_wake_ms": {"one call per frame": wake_latency_ms(lambda: mask_utils.encode(buffer.masks)),
                              "one call per mask": wake_latency_ms(lambda: [mask_utils.encode(
                                  buffer.masks[:, :, i:i + 1]) for i in range(args.detections)])}}
    width = max(map(len, routes))
    for name in routes:
        print(f"{name:<{width}}  CPU best {best[name]:8.1f} ms  median {median[name]:8.1f} ms  "
              f"frames/s per core {1000 / best[name]:7.1f}  wall median {report['wall_ms_median'][name]:8.1f} ms")
    print(f"speed-up per core: CPU only {report['speedup_cpu_only']:.2f}x, host share with a GPU "
          f"{report['speedup_host_with_gpu']:.2f}x (a ready buffer: {report['speedup_buffer']:.2f}x); bytes to the "
          f"host {report['bytes_to_host']}; longest main-thread wait while encoding: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in report["gil_wake_ms"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
