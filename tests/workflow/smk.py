"""Running the workflow from tests: snakemake in a subprocess of this interpreter, on the repository's Snakefile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A tiny synthetic run: 8 videos in 2 shards of 4, a small network, a few iterations.
TINY = """
dataset:
  synthetic: {videos: 8, frames: 4, height: 64, width: 64, classes: 2, max_objects: 2, seed: 1}
split:
  videos_per_class: 1
flow:
  estimator: dis
  shard_size: 4
model: {fpn_channels: 16, mask_branch_channels: 16, head_convs: 1, pairwise_warmup: 2}
train: {iters: 4, batch_size: 2, base_batch: 2, warmup_iters: 1, schedule: step, steps: [3], min_sizes: [64], max_size: 96,
        checkpoint_every: 2}
evaluate: {min_size: 64, max_size: 96, subsets: {resamples: 50}}
"""

# The report's figure jobs that every run with BoxInst and Ours R-50 experiments plans (rules in report.smk),
# and those of them that a training edit reruns.
FIGURES = {"figure_tables": 1, "figure_training_curves": 1, "figure_masks": 1, "figure_activations": 1,
           "figure_subset_ap": 1}
AFTER_TRAINING = {"train", "evaluate", "subset_ap", "tables", *FIGURES}


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's bin folder first on PATH (the rules call `python`), one thread per process."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                OMP_NUM_THREADS="1", **extra)


def command(workdir: Path, *args: str) -> list[str]:
    """The command line `snakemake <args>` on the repository's Snakefile with `workdir` as its working directory."""
    return [sys.executable, "-m", "snakemake", *args, "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `command(workdir, *args)` in `workdir` to its end, output captured."""
    return subprocess.run(command(workdir, *args), cwd=workdir, env=env or environment(), capture_output=True,
                          text=True, timeout=timeout)


def dry_run_with(workdir: Path, override: str) -> subprocess.CompletedProcess:
    """`snakemake -n` in `workdir` with the YAML text `override` as a config file (workdir/override.yaml)."""
    path = workdir / "override.yaml"
    path.write_text(override)
    return snakemake(workdir, "-n", "--configfile", str(path))


def rule_names(log: str) -> set[str]:
    """Rule names of the jobs a snakemake log announces (the target rule `all` left out)."""
    return set(re.findall(r"^(?:local)?rule (\w+):", log, flags=re.M)) - {"all"}


def planned_rules(run: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a dry run lists (on stdout), `all` left out."""
    assert run.returncode == 0, run.stdout + run.stderr
    return rule_names(run.stdout)


def ran_rules(run: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a completed run executed (announced on stderr), `all` left out."""
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    return rule_names(run.stderr)


def planned_jobs(run: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule in a dry run's job stats (the target rule `all` left out)."""
    assert run.returncode == 0, run.stdout + run.stderr
    stats = run.stdout.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    jobs = {line.split()[0]: int(line.split()[1]) for line in stats if line.strip()}
    jobs.pop("all", None)
    return jobs
