"""The CPU refusal: the paper's configuration is refused on a CPU with a message saying what to do; the
demo configurations start; the estimate matches a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from model.cost import CPU_GFLOPS, cpu_refusal, training_gflop
from model.launch import cpu_refusal_of

REPO = Path(__file__).resolve().parents[2]


def merged(*files: str) -> dict:
    """config.yaml with the given config files' sections merged over it (one level, as the tests need)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name in files:
        for key, value in yaml.safe_load((REPO / name).read_text()).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


def test_estimate_by_hand() -> None:
    """resnet50 (4.089 GFLOP at 224²), one stream, 10 iterations of 2 images at 224×min(400, 398.2):
    10 · 2 · 3 · 1 · 4.089 · 224 · 398.22 / 224² = 436.19 GFLOP."""
    model = {"backbone": "resnet50", "two_stream": False}
    train = {"iters": 10, "batch_size": 2, "min_sizes": [200, 248], "max_size": 400}
    assert training_gflop(model, train) == pytest.approx(10 * 2 * 3 * 4.089 * 224 * (224 * 16 / 9) / 224**2)
    assert training_gflop({**model, "two_stream": True}, train) == pytest.approx(2 * training_gflop(model, train))


def test_paper_config_is_refused_on_cpu_and_says_what_to_do() -> None:
    """config/ytvis2019.yaml's ours_r50 run: months on a CPU; the message names the GPU profile and the override."""
    config = merged("config/ytvis2019.yaml")
    model = {**config["model"], "two_stream": True}
    message = cpu_refusal(model, config["train"], {})
    assert message is not None
    days = training_gflop(model, config["train"]) / CPU_GFLOPS / 86400
    assert days > 30 and f"about {days:.0f} days" in message
    assert "workflow/profiles/local" in message and "MOWIS_ALLOW_CPU=1" in message
    assert cpu_refusal(model, config["train"], {"MOWIS_ALLOW_CPU": "1"}) is None


@pytest.mark.parametrize("files", [(), ("config/synthetic_long.yaml",)])
def test_demo_configs_start_on_cpu(files: tuple[str, ...]) -> None:
    """The synthetic demo (and its long version, where it exists) are CPU runs: never refused."""
    if files and not (REPO / files[0]).exists():
        pytest.skip(f"{files[0]} not in this checkout")
    config = merged(*files)
    for exp in config["experiments"].values():
        assert cpu_refusal({**config["model"], **exp["model"]}, config["train"], {}) is None


def test_launcher_reads_the_sections_from_the_train_arguments() -> None:
    """model.launch finds --model-params/--train-params among model.train's arguments."""
    config = merged("config/ytvis2019.yaml")
    args = ["--model-params", json.dumps(config["model"]), "--index", "x.h5",
            "--train-params", json.dumps(config["train"]), "--out", "o"]
    assert cpu_refusal_of(args, {}) == cpu_refusal(config["model"], config["train"], {})
