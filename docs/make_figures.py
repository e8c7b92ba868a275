"""Figures for the docs. `python docs/make_figures.py` writes docs/synthetic_sample.png from config.yaml's
dataset.synthetic section: for a few videos, two frames, the instance masks and the ground-truth flow in the
RGB encoding the flow stream sees (pipeline.flow_codec.flow_to_rgb)."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.flow_codec import flow_to_rgb  # noqa: E402
from pipeline.synthetic import SHAPE_NAMES, SyntheticParams, generate_video  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MASK_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.uint8)


def mask_image(layers: np.ndarray) -> np.ndarray:
    """(H, W) uint8 layer ids (0 background) -> (H, W, 3) uint8: black background, one colour per object."""
    out = np.zeros(layers.shape + (3,), np.uint8)
    for k in range(1, int(layers.max()) + 1):
        out[layers == k] = MASK_COLOURS[(k - 1) % len(MASK_COLOURS)]
    return out


def synthetic_sample(params: SyntheticParams, video_ids: list[int], path: Path) -> None:
    """Rows: videos; columns: frame 0, last frame, masks of frame 0, GT flow 0->1 (RGB-encoded)."""
    last = params.frames - 1
    fig, axes = plt.subplots(len(video_ids), 4, figsize=(4 * 2.6, len(video_ids) * 2.6 * params.height / params.width + 0.6),
                             squeeze=False)
    for row, video_id in zip(axes, video_ids):
        video = generate_video(params, video_id)
        labels = ", ".join(f"{SHAPE_NAMES[o.category_id - 1]}{' (camo)' if o.camouflaged else ''}"
                           for o in video.objects)
        flow = video.flow[0] if len(video.flow) else np.zeros((params.height, params.width, 2), np.float32)
        panels = [(video.frames[0], f"{video.name} t=0"), (video.frames[last], f"t={last}"),
                  (mask_image(video.layers[0]), labels),
                  (flow_to_rgb(flow), f"GT flow 0→1 (max {np.linalg.norm(flow, axis=-1).max():.1f} px)")]
        for ax, (image, title) in zip(row, panels):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("mowis synthetic camouflage dataset (pipeline/synthetic.py, config.yaml defaults)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """CLI: python docs/make_figures.py [--config config.yaml] [--out docs/synthetic_sample.png]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--out", default=str(REPO / "docs" / "synthetic_sample.png"))
    parser.add_argument("--videos", default="1,2,3,4", help="comma-separated video ids")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    params = SyntheticParams(**config["dataset"]["synthetic"])
    synthetic_sample(params, [int(v) for v in args.videos.split(",")], Path(args.out))


if __name__ == "__main__":
    main()
