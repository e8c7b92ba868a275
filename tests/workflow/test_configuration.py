"""Configuration as users give it: `--config` JSON values with their JSON types, a config file choosing the
experiments, bad values refused at start (under -n too), and a run on a dataset path with a space and a quote
(the shared `boxes_run` of conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smk import ONE_STREAM_BOXINST, REPO, dry_run_with, planned_jobs, ran_rules, snakemake


def test_config_values_arrive_with_their_json_types(tmp_path: Path) -> None:
    """Snakemake alone reads `{"iters": 10}` as iters "10" and `null` as "null"; the rules get 10 and null."""
    run = snakemake(tmp_path, "-n", "-p", "--config", 'train={"iters": 10, "steps": [8]}',
                    'model={"head_convs": 3}', 'dataset={"root": null}', 'run=["boxinst"]')
    assert planned_jobs(run)["train"] == 1 and planned_jobs(run)["synthetic"] == 1  # root null: synthetic data
    train = next(line for line in run.stdout.splitlines() if "python -m model.launch" in line)
    assert '"iters": 10,' in train and '"steps": [8]' in train and '"head_convs": 3' in train
    assert "results/train/boxinst/final.pt" in run.stdout and "results/train/ours" not in run.stdout


def test_string_false_for_a_boolean_is_refused_naming_the_key(tmp_path: Path) -> None:
    """An experiment's override "false" (a string) stops the workflow before planning, naming the key."""
    bad = ONE_STREAM_BOXINST.replace("false", '"false"')
    run = snakemake(tmp_path, "-n", "--config", f"experiments={bad}")
    assert run.returncode != 0
    assert "experiments.boxinst.model.two_stream: 'false' is not of type 'boolean'" in run.stdout + run.stderr


def test_not_a_number_is_refused_under_dry_run(tmp_path: Path) -> None:
    """A NaN from a config file is named at start, before any stage is planned."""
    run = dry_run_with(tmp_path, "train:\n  lr: .nan\n")
    assert run.returncode != 0 and "train.lr: nan is not a finite number" in run.stdout + run.stderr


def test_the_readme_config_file_chooses_the_experiments(tmp_path: Path) -> None:
    """The README's example file (`run:` in a user's file): only the experiments it names are trained,
    evaluated and tabled, in its order."""
    readme = (REPO / "README.md").read_text().split("## Configuration")[1]
    example = readme.split("```yaml\n")[1].split("```")[0]
    run = dry_run_with(tmp_path, example)
    jobs = planned_jobs(run)
    assert jobs["train"] == jobs["evaluate"] == 2 and "figure_masks" not in jobs  # Fig. 1 needs boxinst_r50
    assert "results/train/one_stream/final.pt" in run.stdout and "results/train/ours/final.pt" in run.stdout
    assert "results/train/boxinst" not in run.stdout


@pytest.mark.slow
def test_one_stream_run_on_a_dataset_path_with_a_space_and_a_quote(boxes_run) -> None:
    """TINY on a YouTube-VIS folder under "my data's/", the experiments chosen and BoxInst made one-stream from
    the command line: every stage runs to the tables, and BoxInst's checkpoint has no flow stream."""
    assert "my data's" in str(boxes_run.root)
    assert {"split", "flow", "affinity", "frame_index", "train", "evaluate", "tables"} <= ran_rules(boxes_run.process)
    work = boxes_run.work
    assert sorted(p.name for p in (work / "results/tables").glob("*.md"))
    state = torch.load(work / "results/train/boxinst/final.pt", map_location="cpu", weights_only=True)
    assert state["model_params"]["two_stream"] is False
    assert state["model_params"]["mask_channels"] == 16  # merged with config.yaml's boxinst key by key
    keys = list(state["model"])
    assert any(k.startswith("fpn_image.") for k in keys)
    assert not any(k.startswith(("fpn_flow.", "mask_branch_flow.")) for k in keys)
