"""Lineage params (workflow/rules/common.smk STAGES, lineage()): every job's params carry a digest of the config
upstream of it, so a rerun after an interrupted upstream job (whose output Snakemake deleted when it started)
plans that job and everything after it again, instead of "Nothing to be done" over the old config's results.
The declared stage map is checked against the rule graph Snakemake builds."""

from __future__ import annotations

import json
import os
import re
import runpy
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.config import checked_config, load_schema
from smk import (AFTER_TRAINING, REPO, command, copy_run, environment, module_processes, planned_rules, snakemake,
                 write_tiny)
from tiny_ytvis import write_tiny_ytvis

AGGREGATES = {"all", "figures"}  # rules without outputs: targets only, no params


def stage_map(configfiles: list[Path]) -> dict[str, tuple[list[str], list[str]]]:
    """common.smk's STAGES for the workflow's config from the defaults and `configfiles`."""
    config = checked_config([REPO / "config.yaml", *configfiles], [],
                            load_schema(REPO / "workflow/schemas/config.schema.yaml"))
    return runpy.run_path(str(REPO / "workflow/rules/common.smk"), {"config": config})["STAGES"]


def rule_graph(workdir: Path, configfiles: list[Path]) -> dict[str, set[str]]:
    """Per rule of `snakemake --rulegraph`, the rules whose outputs it reads."""
    args = [arg for path in configfiles for arg in ("--configfile", str(path))]
    run = snakemake(workdir, "--rulegraph", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', run.stdout, flags=re.M))
    graph = {name: set() for name in names.values()}
    for source, target in re.findall(r"^\s*(\d+) -> (\d+)$", run.stdout, flags=re.M):
        graph[names[target]].add(names[source])
    return graph


def rule_bodies() -> dict[str, str]:
    """Each rule's text in workflow/rules/*.smk, by rule name."""
    text = "\n".join(path.read_text() for path in sorted((REPO / "workflow/rules").glob("*.smk")))
    parts = re.split(r"^\s*rule (\w+):$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def variants(tmp_path: Path) -> dict[str, list[Path]]:
    """Config files that switch on each conditional edge: the defaults (synthetic data, DIS); ground-truth flow
    with a flow-quality axis; a YouTube-VIS folder with GMA."""
    other = tmp_path / "other run/results"
    for name in ("flow/quality.json", "split/train_val_coco.json", "eval/ours/metrics.json",
                 "eval/ours/subsets.json"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text("{}")
    root = tmp_path / "ytvis"
    write_tiny_ytvis(root, videos=2, frames=2, height=32, width=32)
    gt = tmp_path / "gt.yaml"
    gt.write_text(json.dumps({"flow": {"estimator": "gt"}, "flow_axis_runs": [str(other.parent)]}))
    gma = tmp_path / "gma.yaml"
    gma.write_text(json.dumps({"dataset": {"root": str(root)}, "flow": {"estimator": "gma"}}))
    return {"default": [], "gt_flow_axis": [gt], "ytvis_gma": [gma]}


@pytest.mark.parametrize("variant", ["default", "gt_flow_axis", "ytvis_gma"])
def test_stage_map_is_the_rule_graph(variant: str, tmp_path: Path) -> None:
    """For every rule Snakemake plans, the upstream stages STAGES declares are exactly the rules that make its
    inputs, and every rule with upstream stages passes its lineage as a param."""
    files = variants(tmp_path)[variant]
    workdir = tmp_path / "work"
    workdir.mkdir()
    graph, stages, bodies = rule_graph(workdir, files), stage_map(files), rule_bodies()
    assert {"train", "evaluate", "tables"} <= set(graph)
    for rule, producers in graph.items():
        if rule in AGGREGATES:
            continue
        assert set(stages[rule][1]) == producers, rule
        if producers:
            assert f'upstream=lineage("{rule}"' in bodies[rule], rule
    expected = {"default": {"synthetic", "flow_quality"}, "gt_flow_axis": {"figure_flow_axis"},
                "ytvis_gma": {"gma_checkpoint"}}[variant]
    assert expected <= set(graph) and ("synthetic" in graph) == (variant != "ytvis_gma")


def interrupt_when(workdir: Path, args: list[str], started: str, timeout: float = 300.0) -> None:
    """Run `snakemake --cores 2 <args>` in `workdir` (the two train jobs side by side) as its own process group
    and send the group SIGINT (Ctrl-C) once a train log contains `started`; wait for snakemake to end. Not at the
    jobs' very start: Snakemake may lose a SIGINT that arrives while it launches them."""
    for log in (workdir / "logs/train").glob("*.log"):
        log.unlink()  # the finished run's logs: wait for the new jobs' own
    err = workdir / "interrupted.err"
    with open(err, "w") as stderr:
        run = subprocess.Popen(command(workdir, "--cores", "2", *args), cwd=workdir, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + timeout
    logs = [workdir / f"logs/train/{exp}.log" for exp in ("boxinst", "ours")]
    while not any(log.exists() and started in log.read_text() for log in logs):
        assert run.poll() is None, f"snakemake ended before training started: {err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=120) != 0, err.read_text()[-3000:]
    assert not list(workdir.glob("results/train/*/final.pt")), err.read_text()[-3000:]


@pytest.mark.slow
def test_interrupted_training_is_planned_again(tiny_run, tmp_path: Path) -> None:
    """train.iters edited with --config, the train jobs Ctrl-C'd once training started (Snakemake deleted the
    old final.pt files): the same command under -n plans training and everything after it, not the data stages
    (before the lineage params: "Nothing to be done", the old tables kept)."""
    work = copy_run(tiny_run.work, tmp_path / "run")
    args = ["--configfile", str(work / "tiny.yaml"), "--config", 'train={"iters": 1000}']
    interrupt_when(work, args, "training steps 5 to 1000")
    assert planned_rules(snakemake(work, "-n", *args)) == AFTER_TRAINING


@pytest.mark.slow
def test_killed_affinity_jobs_are_planned_again(tiny_run, tmp_path: Path) -> None:
    """affinity.tau_flow edited; both shards' affinity jobs SIGKILLed as they start (the OOM killer's way), after
    Snakemake deleted their old stores. The rerun plans affinity, training and what follows, not flow (before the
    lineage params: "Nothing to be done", as final.pt is newer than every existing input of train)."""
    work = copy_run(tiny_run.work, tmp_path / "run").resolve()
    args = ["--configfile", str(write_tiny(work / "tau.yaml", affinity={"tau_flow": 0.7}))]
    run = subprocess.Popen(command(work, "--cores", "2", *args), cwd=work, env=environment(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 300, set()
    while len(killed) < 2 and run.poll() is None:
        assert time.monotonic() < deadline, "the affinity jobs never started"
        jobs = {pid for pid, (_, cwd) in module_processes("pipeline.affinity").items() if cwd == str(work)}
        for pid in jobs - killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.01)
    assert run.wait(timeout=120) != 0 and len(killed) == 2
    assert not list((work / "results/affinity").glob("shard_*.zarr"))
    assert planned_rules(snakemake(work, "-n", *args)) == {"affinity", *AFTER_TRAINING}
