"""The rerun promise (issues 7 and 11): after a full run of a tiny config, a config edit reruns exactly the
stages downstream of the edited section, and in effect: training after an input edit starts from step 0,
more iterations resume; no edit runs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from smk import AFTER_TRAINING, REPO, copy_run, planned_rules, ran_rules, snakemake, write_tiny

EXPERIMENTS = list(yaml.safe_load((REPO / "config.yaml").read_text())["experiments"])


def key_folders(workdir: Path) -> dict[str, set[str]]:
    """Per experiment, its training trajectories: the names of its checkpoints/<run key>/ folders."""
    return {exp.name: {key.name for key in (exp / "checkpoints").iterdir() if key.is_dir()}
            for exp in sorted((workdir / "results/train").iterdir())}


def final_weights(workdir: Path) -> dict[str, dict]:
    """Per experiment, its final.pt (weights_only)."""
    return {exp: torch.load(workdir / f"results/train/{exp}/final.pt", weights_only=True) for exp in EXPERIMENTS}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def train_log(workdir: Path, exp: str) -> str:
    """The trainer's log of the experiment's latest train job."""
    return (workdir / f"logs/train/{exp}.log").read_text()


@pytest.mark.slow
def test_config_edits_rerun_exactly_the_downstream_stages(tiny_run, tmp_path: Path) -> None:
    """On a copy of the shared tiny full run (conftest.py). Plans: no edit nothing; train.lr train, evaluate,
    tables and the figures made from trained models; affinity.tau_flow affinity and those, not flow;
    evaluate.coco_backend evaluate and what reads its files, no training, no inference figure; split.seed the
    split and frame index, not the manifest, flow or affinity. Runs: tau_flow reruns those, and every
    experiment trains from step 0 in a new trajectory (the motion model, which reads the flow masks, to other
    weights; BoxInst, which does not, to the same ones), and then no edit runs nothing; train.iters 4 -> 6
    (only the train jobs, to keep CI short) resumes each from that run's step-4 checkpoint and trains 2 steps.
    Before that, editing the motion bin edges reruns subset AP, the tables and their figures, not inference:
    new bins, the same numbers on all objects."""
    first = tiny_run.process
    work = copy_run(tiny_run.work, tmp_path / "run")
    base = work / "tiny.yaml"
    assert {"synthetic", "flow", "affinity", "train", "evaluate", "tables"} <= ran_rules(first)
    tables = {p.name for p in (work / "results/tables").iterdir()}
    assert {f"table{i}.md" for i in range(1, 5)} <= tables, tables
    for exp in EXPERIMENTS:
        assert "training from step 0 to 4" in train_log(work, exp)

    def plan(config: Path) -> set[str]:
        return planned_rules(snakemake(work, "-n", "--configfile", str(config)))

    assert plan(base) == set()
    assert plan(write_tiny(tmp_path / "lr.yaml", train={"lr": 2.0e-2})) == AFTER_TRAINING
    tau = write_tiny(tmp_path / "tau.yaml", affinity={"tau_flow": 0.7})
    assert plan(tau) == {"affinity", *AFTER_TRAINING}
    backend = write_tiny(tmp_path / "backend.yaml", evaluate={"coco_backend": "faster-coco-eval"})
    assert plan(backend) == AFTER_TRAINING - {"train", "figure_training_curves", "figure_activations"}
    # split.seed: the split and what reads it; the flow stages read the manifest, which split does not write
    seed = plan(write_tiny(tmp_path / "seed.yaml", split={"seed": 5}))
    assert {"split", "frame_index", "train"} <= seed and not seed & {"manifest", "flow", "flow_quality", "affinity"}

    # affinity.tau_flow: new masks, so new trajectories from step 0 (issue 11: not the old checkpoint)
    keys, old = key_folders(work), final_weights(work)
    assert all(len(k) == 1 for k in keys.values()) and set(keys) == set(EXPERIMENTS), keys
    flow = {p.name: p.stat().st_mtime_ns for p in (work / "results/flow").iterdir()}
    assert ran_rules(snakemake(work, "--cores", "2", "--configfile", str(tau))) == {"affinity", *AFTER_TRAINING}
    assert {p.name: p.stat().st_mtime_ns for p in (work / "results/flow").iterdir()} == flow
    new = final_weights(work)
    fresh = {exp: (k - keys[exp]).pop() for exp, k in key_folders(work).items()}
    assert all(len(k) == 2 for k in key_folders(work).values())
    for exp in EXPERIMENTS:
        log = train_log(work, exp)
        assert f"training from step 0 to 4: no checkpoint of run {fresh[exp]}" in log, log[-3000:]
        assert "resumed from" not in log
        assert new[exp]["step"] == 4 and new[exp]["inputs"]["affinity/shard_0.zarr"]["params"]["tau_flow"] == 0.7
        assert old[exp]["inputs"]["affinity/shard_0.zarr"]["params"]["tau_flow"] == 0.6
    assert not same_tensors(old["ours"]["model"], new["ours"]["model"])
    assert same_tensors(old["boxinst"]["model"], new["boxinst"]["model"])  # colour pairs only: same inputs read
    assert ran_rules(snakemake(work, "--cores", "2", "--configfile", str(tau))) == set()  # no edit

    # motion bin edges: subset AP, the tables and their figures only; new bins, the same AP on all objects
    before = {exp: json.loads((work / f"results/eval/{exp}/subsets.json").read_text()) for exp in EXPERIMENTS}
    metrics = {exp: (work / f"results/eval/{exp}/metrics.json").stat().st_mtime_ns for exp in EXPERIMENTS}
    subsets = {"subsets": {"resamples": 50, "motion_edges": [0.1, 0.2]}}
    edges = write_tiny(tmp_path / "edges.yaml", affinity={"tau_flow": 0.7}, evaluate=subsets)
    subset_rules = {"subset_ap", "tables", "figure_tables", "figure_subset_ap"}
    assert plan(edges) == subset_rules
    assert ran_rules(snakemake(work, "--cores", "2", "--configfile", str(edges))) == subset_rules
    for exp in EXPERIMENTS:
        after = json.loads((work / f"results/eval/{exp}/subsets.json").read_text())
        assert after["motion_edges_px_per_frame"] == [0.1, 0.2] != before[exp]["motion_edges_px_per_frame"]
        assert after["subsets"]["all"] == before[exp]["subsets"]["all"]
        assert [after["subsets"][b]["objects"] for b in ("static", "slow", "fast")] != [
            before[exp]["subsets"][b]["objects"] for b in ("static", "slow", "fast")]
        assert (work / f"results/eval/{exp}/metrics.json").stat().st_mtime_ns == metrics[exp]

    # train.iters 4 -> 6: the same trajectory, resumed at its last checkpoint; only steps 5 and 6 run
    longer = write_tiny(tmp_path / "longer.yaml", affinity={"tau_flow": 0.7}, evaluate=subsets,
                          train={"iters": 6})
    trained = [f"results/train/{exp}/final.pt" for exp in EXPERIMENTS]
    assert ran_rules(snakemake(work, *trained, "--cores", "2", "--configfile", str(longer))) == {"train"}
    assert key_folders(work) == {exp: keys[exp] | {fresh[exp]} for exp in EXPERIMENTS}
    for exp in EXPERIMENTS:
        log = train_log(work, exp)
        checkpoint = f"results/train/{exp}/checkpoints/{fresh[exp]}/ckpt_00000004.pt"
        assert f"resumed from {checkpoint} at step 4; training steps 5 to 6" in log, log[-3000:]
        assert "after 6 steps, 2 of them trained in this run" in log, log[-3000:]
        assert "training from step 0" not in log
        assert torch.load(work / f"results/train/{exp}/final.pt", weights_only=True)["step"] == 6
