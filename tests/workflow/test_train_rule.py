"""Rules frame_index and train as the DAG plans them: one train job per experiment, overrides checked."""

from __future__ import annotations

import subprocess
from pathlib import Path

from smk import dry_run_with


def test_dry_run_plans_one_train_job_per_experiment(default_plan: subprocess.CompletedProcess) -> None:
    """The default config's experiments (boxinst, ours) each get a torchrun train job on the index."""
    run = default_plan
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("rule train:") == 2 and "rule frame_index:" in run.stdout
    for exp in ("boxinst", "ours"):
        assert f"results/train/{exp}/final.pt" in run.stdout
    assert "python -m model.launch --gpus 0 --threads" in run.stdout
    assert '"two_stream": false' in run.stdout  # the boxinst override reached its params


def test_unknown_model_override_is_named(tmp_path: Path) -> None:
    """An experiment overriding a key the model section lacks fails naming the experiment and the key."""
    run = dry_run_with(tmp_path, "experiments:\n  x:\n    paper: null\n    model: {backbon: resnet50}\n")
    assert run.returncode != 0
    assert "experiments.x.model: unknown keys ['backbon']" in run.stdout + run.stderr
