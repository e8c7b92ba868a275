"""Score the configured flow estimator against the synthetic dataset's ground truth (rule `flow_quality`).

For every video, the forward flow F(t -> t+1), t < T-1, of the configured estimator is compared with
`<gt-root>/flow_gt/<video folder>.npy` ((T-1, H, W, 2) float32, written by pipeline.synthetic): endpoint error
EPE = mean ||F - F_gt||_2 and the share of pixels whose error exceeds 3 px, per video and over all pixels.

The `gt` source scores 0 by construction (the oracle of the flow-quality axis, config/flow_axis.yaml).

CLI: python -m pipeline.flow_quality --root R --manifest results/manifest.json --gt-root R --params JSON
  --out results/flow/quality.json
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.flow import FlowSource, GroundTruthFlow, estimator_cli, estimator_from_args, read_frames
from pipeline.io import setup_logging, write_json_atomic
from pipeline.manifest import load_manifest
from pipeline.progress import progress_bar
from pipeline.ytvis import Video

OUTLIER_PX = 3.0  # an endpoint error above this counts as an outlier


def endpoint_errors(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, H, W, 2) flows -> (N, H, W) float64 Euclidean distance between the vectors."""
    if estimated.shape != truth.shape:
        raise ValueError(f"estimated flow {estimated.shape} and ground truth {truth.shape} differ in shape")
    diff = estimated.astype(np.float64) - truth.astype(np.float64)
    return np.sqrt((diff ** 2).sum(axis=-1))


def summarise(errors: np.ndarray) -> dict:
    """EPE, outlier share and pixel count of an array of endpoint errors."""
    return {"epe": float(errors.mean()), "outliers_3px": float((errors > OUTLIER_PX).mean()),
            "pixels": int(errors.size)}


def score_video(root: str | Path, truth: GroundTruthFlow, video: Video, source: FlowSource) -> np.ndarray:
    """(T-1, H, W) endpoint errors of the forward flow of one video against its ground truth (zeros for
    the `gt` source itself: the oracle's EPE)."""
    expected = truth.forward(video)
    if video.length < 2:
        return np.zeros((0, video.height, video.width))
    if isinstance(source, GroundTruthFlow):
        return endpoint_errors(source.forward(video), expected)
    frames = read_frames(root, video)
    return endpoint_errors(source(frames[:-1], frames[1:]), expected)


def main(argv: list[str] | None = None) -> None:
    """CLI of rule `flow_quality`."""
    ap = estimator_cli(__doc__)
    ap.add_argument("--gt-root", required=True, help="the synthetic dataset holding flow_gt/<video>.npy")
    args = ap.parse_args(argv)
    log = setup_logging()
    params, estimate = estimator_from_args(args)
    dataset = load_manifest(args.manifest, args.root)
    truth = GroundTruthFlow(args.gt_root)
    start = time.perf_counter()
    per_video, all_errors = {}, []
    for video in progress_bar(len(dataset.videos), "flow quality", unit="video", iterable=dataset.videos):
        errors = score_video(args.root, truth, video, estimate)
        if errors.size:
            per_video[str(video.id)] = summarise(errors)
            all_errors.append(errors.ravel())
    if not all_errors:
        raise ValueError(f"{dataset.annotation_file}: no video has two frames; nothing to score")
    overall = summarise(np.concatenate(all_errors))
    write_json_atomic(args.out, {"estimator": params.estimator, "params": params.as_dict(),
                                 "outlier_threshold_px": OUTLIER_PX, "overall": overall, "videos": per_video,
                                 "seconds": round(time.perf_counter() - start, 3)})
    log.info("flow quality (%s): EPE %.3f px, %.1f %% of pixels > %g px", params.estimator, overall["epe"],
             100 * overall["outliers_3px"], OUTLIER_PX)


if __name__ == "__main__":
    main()
