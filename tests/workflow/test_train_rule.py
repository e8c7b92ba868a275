"""Rules frame_index and train as the DAG plans them: one train job per experiment, overrides checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment, with its bin folder first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_plans_one_train_job_per_experiment(tmp_path: Path) -> None:
    """The default config's experiments (boxinst, ours) each get a torchrun train job on the index."""
    run = snakemake("-n", "-p", "--directory", str(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("rule train:") == 2 and "rule frame_index:" in run.stdout
    for exp in ("boxinst", "ours"):
        assert f"results/train/{exp}/final.pt" in run.stdout
    assert "python -m model.launch --gpus 0 --threads" in run.stdout
    assert '"two_stream": false' in run.stdout  # the boxinst override reached its params


def test_unknown_model_override_is_named(tmp_path: Path) -> None:
    """An experiment overriding a key the model section lacks fails naming the experiment and the key."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("experiments:\n  x:\n    paper: null\n    model: {backbon: resnet50}\n")
    run = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(cfg), cwd=tmp_path)
    assert run.returncode != 0
    assert "experiments.x.model: unknown keys ['backbon']" in run.stdout + run.stderr
