"""The workflow as users run it: lint and snakefmt clean, and dry runs that build the whole DAG (default and paper configs)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from smk import FIGURES, REPO, dry_run_with, planned_jobs, snakemake


def test_lint_is_clean(tmp_path: Path) -> None:
    """`snakemake --lint` reports nothing."""
    run = snakemake(tmp_path, "--lint")
    assert run.returncode == 0, run.stdout + run.stderr


def test_snakefmt_is_clean() -> None:
    """`snakefmt --check` on the Snakefile and every rule file (the formatting the catalogue's workflows keep)."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow").rglob("*.smk")), *sorted((REPO / "tests").rglob("*.smk"))]
    run = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dry_run_builds_the_dag(default_plan: subprocess.CompletedProcess) -> None:
    """A dry run on the default config plans every stage from the synthetic dataset down to the tables."""
    run = default_plan
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rule synthetic" in run.stdout and "rule split" in run.stdout
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    shards = math.ceil(config["dataset"]["synthetic"]["videos"] / config["flow"]["shard_size"])
    runs = len(config["experiments"])
    jobs = planned_jobs(run)
    assert jobs == {"synthetic": 1, "split": 1, "manifest": 1, "flow": shards, "flow_quality": 1, "affinity": shards,
                    "frame_index": 2, "train": runs, "evaluate": runs, "object_motion": 1, "subset_ap": runs,
                    "tables": 1, **FIGURES, "figure_flow_quality": 1}, jobs


def test_unknown_config_key_is_rejected(tmp_path: Path) -> None:
    """The schema names a key it does not know."""
    run = dry_run_with(tmp_path, "split:\n  videos_per_clas: 3\n  seed: 0\n")
    assert run.returncode != 0
    assert "videos_per_clas" in run.stdout + run.stderr


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads `1e-3` as a string; the workflow still takes it as the number the schema wants."""
    run = dry_run_with(tmp_path, "affinity:\n  theta_flow: 5e-1\n  theta_color: 2\n  tau_color: 3e-1\n"
                                 "  tau_flow: 0.6\n  bottom_rows: 10\n")
    assert run.returncode == 0, run.stdout + run.stderr


def test_dry_run_of_the_long_synthetic_config(tmp_path: Path) -> None:
    """config/synthetic_long.yaml on top of the default passes the schema and trains each experiment for its
    10000 iterations (the train jobs' params), everything else as the default."""
    run = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/synthetic_long.yaml"))
    assert run.returncode == 0, run.stdout + run.stderr
    train_commands = [line for line in run.stdout.splitlines() if "-m model.launch" in line]
    assert len(train_commands) == 2 and all('"iters": 10000' in line for line in train_commands), train_commands


def test_dry_run_of_the_paper_config(tmp_path: Path, make_ytvis: Callable[..., Path]) -> None:
    """config/ytvis2019.yaml on a YouTube-VIS folder: GMA flow with its checkpoint fetched first, one flow and
    affinity job per 64 videos, one train and evaluate job per experiment of the paper's tables, the tables."""
    root = make_ytvis(videos=70, frames=2, height=16, width=16)  # 70 videos: shards of 64 and 6
    work = tmp_path / "work"
    work.mkdir()
    override = tmp_path / "root.yaml"
    override.write_text(f"dataset:\n  root: {root}\n")
    run = snakemake(work, "-n", "--configfile", str(REPO / "config/ytvis2019.yaml"), str(override))
    jobs = planned_jobs(run)
    experiments = ["boxinst", "ours", "boxinst_r101", "ours_r101", "no_motion_det", "no_motion_mask",
                   "no_flow_pairwise", "det_max", "mask_sum", "mask_max"]
    assert jobs == {"gma_checkpoint": 1, "split": 1, "manifest": 1, "flow": 2, "affinity": 2, "frame_index": 2,
                    "train": 10, "evaluate": 10, "object_motion": 1, "subset_ap": 10, "tables": 1,
                    **FIGURES}, jobs  # no synthetic data, no flow_quality
    for exp in experiments:
        assert f"results/train/{exp}/final.pt" in run.stdout and f"results/eval/{exp}/metrics.json" in run.stdout
    assert "weights/gma-sintel.pth" in run.stdout
