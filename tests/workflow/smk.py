"""Running the workflow from tests: snakemake in a subprocess of this interpreter, on the repository's Snakefile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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

# BoxInst made one-stream: the value of `--config experiments=...`.
ONE_STREAM_BOXINST = json.dumps({"boxinst": {"paper": "boxinst_r50", "model": {"two_stream": False}}})

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
              timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run `command(workdir, *args)` in `workdir` to its end, output captured. The timeout only catches a hang:
    a tiny full run takes about 2 minutes on 2 idle cores, over 10 on 2 cores shared by a dozen processes."""
    return subprocess.run(command(workdir, *args), cwd=workdir, env=env or environment(), capture_output=True,
                          text=True, timeout=timeout)


def write_tiny(path: Path, **edits: dict) -> Path:
    """TINY with {section: {key: value}} edits merged into its sections, written to `path`."""
    config = yaml.safe_load(TINY)
    for section, values in edits.items():
        config[section] = config.get(section, {}) | values
    path.write_text(yaml.safe_dump(config))
    return path


def copy_run(workdir: Path, to: Path) -> Path:
    """A copy of a finished run's working directory at `to`, file times kept: Snakemake finds it up to date."""
    shutil.copytree(workdir, to, symlinks=True)
    return to


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


def module_processes(module: str) -> dict[int, tuple[list[str], str]]:
    """The running `python -m <module>` processes (a stage's job): {pid: (argv, working directory)}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
            cwd = os.readlink(entry / "cwd")
        except OSError:  # a process that ended meanwhile
            continue
        if argv[1:3] == ["-m", module]:
            found[int(entry.name)] = (argv, cwd)
    return found
