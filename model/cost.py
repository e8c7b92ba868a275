"""What a training run costs, estimated before it starts: a CPU is refused a run that only GPUs can carry.

The estimate counts the backbone alone (FPN and heads add to it), as torchvision's weights metadata counts a
ResNet's forward pass at 224×224 (`_ops`), scaled by the pixels of a training image and ×3 for the backward
pass, once per stream, for every image of every iteration. A training image is taken as the mean of
`train.min_sizes` on its short side and 16:9 (YouTube-VIS's usual frame) capped at `train.max_size` on its
long side. At `CPU_GFLOPS` (a generous rate for a many-core CPU in fp32 convolution) a run estimated beyond
`CPU_HOURS_LIMIT` hours is refused on a CPU unless MOWIS_ALLOW_CPU=1: the paper's R-50 at 640–800 px comes to
months, the synthetic demo to minutes.
"""

from __future__ import annotations

from model.backbone import imagenet_weights

CPU_GFLOPS = 100.0
CPU_HOURS_LIMIT = 48.0
ALLOW_CPU = "MOWIS_ALLOW_CPU"


def training_gflop(model: dict, train: dict) -> float:
    """Backbone GFLOP of the whole run: iters × batch × 3 (fwd + bwd) × streams × ops(224²) × pixels / 224²."""
    ops = imagenet_weights(model["backbone"]).meta["_ops"]
    short = sum(train["min_sizes"]) / len(train["min_sizes"])
    pixels = short * min(train["max_size"], short * 16 / 9)
    streams = 2 if model["two_stream"] else 1
    return train["iters"] * train["batch_size"] * 3 * streams * ops * pixels / 224**2


def cpu_refusal(model: dict, train: dict, env: dict[str, str]) -> str | None:
    """Why this run must not start on a CPU (a message saying what to do), or None when it may."""
    hours = training_gflop(model, train) / CPU_GFLOPS / 3600
    if hours <= CPU_HOURS_LIMIT or env.get(ALLOW_CPU) == "1":
        return None
    return (f"train: no GPU for this run: {model['backbone']} with {2 if model['two_stream'] else 1} stream(s), "
            f"{train['iters']} iterations of {train['batch_size']} images at short side {min(train['min_sizes'])}"
            f"–{max(train['min_sizes'])} is about {hours / 24:.0f} days on a CPU ({CPU_GFLOPS:.0f} GFLOP/s). "
            f"Run it on GPUs: `MOWIS_GPUS=<n> snakemake --profile workflow/profiles/local ...` on a GPU "
            f"workstation, or the SLURM profile (README, 'GPU workstation and cluster'). To train on the CPU "
            f"anyway, set {ALLOW_CPU}=1.")
