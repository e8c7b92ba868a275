"""The rerun promise (issue 7): after a full run of a tiny config, a config edit reruns exactly the stages
downstream of the edited section, and no edit reruns nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smk import AFTER_TRAINING, REPO, TINY, planned_rules, ran_rules, snakemake


def write_config(path: Path, **edits: dict) -> Path:
    """TINY with {section: {key: value}} edits merged into its sections, written to `path`."""
    config = yaml.safe_load(TINY)
    for section, values in edits.items():
        config[section] = config.get(section, {}) | values
    path.write_text(yaml.safe_dump(config))
    return path


def train_runs(workdir: Path) -> dict[str, int]:
    """Per experiment, how many training trajectories (checkpoints/<run key>/ folders) it holds."""
    return {exp.name: sum(1 for key in (exp / "checkpoints").iterdir() if key.is_dir())
            for exp in sorted((workdir / "results/train").iterdir())}


@pytest.mark.slow
def test_config_edits_rerun_exactly_the_downstream_stages(tmp_path: Path) -> None:
    """No edit: nothing planned. train.lr: train, evaluate, tables and the figures made from trained models.
    affinity.tau_flow: affinity and those, not flow. The lr rerun runs those rules only, trains afresh (a new
    trajectory), and leaves nothing planned."""
    base = write_config(tmp_path / "tiny.yaml")
    first = snakemake(tmp_path, "--cores", "2", "--configfile", str(base))
    assert {"synthetic", "flow", "affinity", "train", "evaluate", "tables"} <= ran_rules(first)
    tables = {p.name for p in (tmp_path / "results/tables").iterdir()}
    assert {f"table{i}.md" for i in range(1, 5)} <= tables, tables

    def plan(config: Path) -> set[str]:
        return planned_rules(snakemake(tmp_path, "-n", "--configfile", str(config)))

    assert plan(base) == set()
    lr = write_config(tmp_path / "lr.yaml", train={"lr": 2.0e-2})
    assert plan(lr) == AFTER_TRAINING
    tau = write_config(tmp_path / "tau.yaml", affinity={"tau_flow": 0.7})
    assert plan(tau) == {"affinity", *AFTER_TRAINING}

    runs = train_runs(tmp_path)
    assert runs == {exp: 1 for exp in yaml.safe_load((REPO / "config.yaml").read_text())["experiments"]}
    flow = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results/flow").iterdir()}
    rerun = snakemake(tmp_path, "--cores", "2", "--configfile", str(lr))
    assert ran_rules(rerun) == AFTER_TRAINING
    assert train_runs(tmp_path) == {exp: n + 1 for exp, n in runs.items()}  # a fresh run, not a resumed one
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results/flow").iterdir()} == flow
    assert plan(lr) == set()
