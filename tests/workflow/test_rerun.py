"""The rerun promise (issue 7): after a full run of a tiny config, a config edit reruns exactly the stages
downstream of the edited section, and no edit reruns nothing."""

from __future__ import annotations

import json
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
    trajectory), and leaves nothing planned. Editing the motion bin edges then reruns subset AP, the tables and
    their figures, not inference: new bins, the same numbers on all objects."""
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

    # motion bin edges: subset AP, the tables and their figures only; new bins, the same AP on all objects
    before = {exp: json.loads((tmp_path / f"results/eval/{exp}/subsets.json").read_text()) for exp in runs}
    metrics = {exp: (tmp_path / f"results/eval/{exp}/metrics.json").stat().st_mtime_ns for exp in runs}
    edges = write_config(tmp_path / "edges.yaml", train={"lr": 2.0e-2},
                         evaluate={"subsets": {"resamples": 50, "motion_edges": [0.1, 0.2]}})
    subset_rules = {"subset_ap", "tables", "figure_tables", "figure_subset_ap"}
    assert plan(edges) == subset_rules
    assert ran_rules(snakemake(tmp_path, "--cores", "2", "--configfile", str(edges))) == subset_rules
    for exp in runs:
        after = json.loads((tmp_path / f"results/eval/{exp}/subsets.json").read_text())
        assert after["motion_edges_px_per_frame"] == [0.1, 0.2] != before[exp]["motion_edges_px_per_frame"]
        assert after["subsets"]["all"] == before[exp]["subsets"]["all"]
        assert [after["subsets"][b]["objects"] for b in ("static", "slow", "fast")] != [
            before[exp]["subsets"][b]["objects"] for b in ("static", "slow", "fast")]
        assert (tmp_path / f"results/eval/{exp}/metrics.json").stat().st_mtime_ns == metrics[exp]
