"""The workflow as users run it: lint clean and a dry run that builds the whole DAG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment, with its bin folder first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_lint_is_clean(tmp_path: Path) -> None:
    """`snakemake --lint` reports nothing."""
    run = snakemake("--lint", "--directory", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr


def test_dry_run_builds_the_dag(tmp_path: Path) -> None:
    """A dry run on the default config plans the synthetic and split stages."""
    run = snakemake("-n", "--directory", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rule synthetic" in run.stdout and "rule split" in run.stdout


def test_unknown_config_key_is_rejected(tmp_path: Path) -> None:
    """The schema names a key it does not know."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  videos_per_clas: 3\n  seed: 0\n")
    run = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(bad))
    assert run.returncode != 0
    assert "videos_per_clas" in run.stdout + run.stderr


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads `1e-3` as a string; the workflow still takes it as the number the schema wants."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("affinity:\n  theta_flow: 5e-1\n  theta_color: 2\n  tau_color: 3e-1\n  tau_flow: 0.6\n"
                   "  bottom_rows: 10\n")
    run = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(cfg))
    assert run.returncode == 0, run.stdout + run.stderr
