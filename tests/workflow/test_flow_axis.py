"""The flow-quality axis (config/flow_axis.yaml): a run with `--config flow='{"estimator": "gt"}'` stores and scores
the ground truth; `model.figures flow-axis` collects run directories into one EPE-vs-mask-AP figure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.figures import collect_flow_axis, main
from smk import REPO, TINY, planned_jobs, ran_rules, snakemake


@pytest.mark.slow
def test_gt_run_stores_and_scores_the_ground_truth(tmp_path: Path) -> None:
    """The documented command line (flow_axis.yaml, then the tiny config, then --config flow=...) makes gt
    stores and an EPE of 0; no GPU resource is asked for."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    work = tmp_path / "flow_gt"
    work.mkdir()
    run = snakemake(work, "--cores", "2", "results/flow/quality.json", "results/flow/shard_0.zarr",
                    "--configfile", str(REPO / "config/flow_axis.yaml"), str(tiny),
                    "--config", 'flow={"estimator": "gt"}')
    assert ran_rules(run) == {"synthetic", "manifest", "flow", "flow_quality"}
    quality = json.loads((work / "results/flow/quality.json").read_text())
    assert quality["estimator"] == "gt" and quality["overall"]["epe"] == 0.0 and quality["overall"]["pixels"] > 0
    attributes = json.loads((work / "results/flow/shard_0.zarr/zarr.json").read_text())["attributes"]
    assert attributes["estimator"] == "gt" and attributes["params"]["estimator"] == "gt"


def fake_run(root: Path, estimator: str, epe: float, ap: float, baseline_ap: float, split: bytes = b"split") -> Path:
    """A run directory with the three files the figure reads, and its split file."""
    for rel, content in (("results/flow/quality.json", {"estimator": estimator, "overall": {"epe": epe,
                                                                                                "outliers_3px": 0.1}}),
                         ("results/eval/ours/metrics.json", {"segm": {"AP": ap}}),
                         ("results/eval/boxinst/metrics.json", {"segm": {"AP": baseline_ap}})):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    (root / "results/split/train_val_coco.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "results/split/train_val_coco.json").write_bytes(split)
    return root


def test_flow_axis_collects_runs_sorted_by_epe_and_refuses_mixed_ones(tmp_path: Path, capsys) -> None:
    runs = [fake_run(tmp_path / "flow_dis", "dis", 0.21, 30.5, 20.0),
            fake_run(tmp_path / "flow_gt", "gt", 0.0, 34.0, 20.2)]
    points = collect_flow_axis(runs, "ours", "boxinst")
    assert [(p.run, p.estimator, p.epe, p.mask_ap, p.baseline_ap) for p in points] == [
        ("flow_gt", "gt", 0.0, 34.0, 20.2), ("flow_dis", "dis", 0.21, 30.5, 20.0)]
    out = tmp_path / "axis.png"
    main(["flow-axis", "--runs", *map(str, runs), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines() == [
        "flow_gt: gt EPE 0.000 px (10.0% > 3 px), ours mask AP 34.0, boxinst 20.2",
        "flow_dis: dis EPE 0.210 px (10.0% > 3 px), ours mask AP 30.5, boxinst 20.0"]
    other_split = fake_run(tmp_path / "flow_raft", "raft", 0.5, 31.0, 20.0, split=b"other")
    with pytest.raises(ValueError, match="do not share one split"):
        collect_flow_axis([*runs, other_split], "ours", "boxinst")
    again = fake_run(tmp_path / "flow_dis2", "dis", 0.2, 30.0, 20.0)
    with pytest.raises(ValueError, match="same flow source"):
        collect_flow_axis([*runs, again], "ours", None)
    shutil.rmtree(runs[0] / "results/eval")
    with pytest.raises(FileNotFoundError, match=r"flow_dis/results/eval/ours/metrics.json: missing; .*rule evaluate"):
        collect_flow_axis(runs, "ours", "boxinst")


def subsets_file(root: Path, experiment: str, cells: dict[str, tuple[float, float, float]]) -> None:
    """results/eval/<experiment>/subsets.json as rule subset_ap writes it (mask AP value and interval only)."""
    subsets = {name: {"segm": {"AP": {"value": v, "interval": [lo, hi]}}} for name, (v, lo, hi) in cells.items()}
    (root / f"results/eval/{experiment}/subsets.json").write_text(json.dumps({"subsets": subsets}))


def test_flow_axis_table_per_subset_with_the_baseline_from_the_run_that_has_it(tmp_path: Path) -> None:
    """The gt run trains ours only (run: [ours]; BoxInst reads no flow): its baseline cells are dashes, the dis
    run's come from its files; subsets without a subsets.json fall back to the metrics' AP (all) or a dash."""
    dis = fake_run(tmp_path / "flow_dis", "dis", 0.2154, 30.5, 20.0)
    subsets_file(dis, "ours", {"all": (30.5, 28.04, 33.96), "camouflaged": (12.25, 9.0, 15.5),
                               "distinct": (40.0, 35.0, 45.0)})
    gt = fake_run(tmp_path / "flow_gt", "gt", 0.0, 34.0, 0.0)
    shutil.rmtree(gt / "results/eval/boxinst")
    subsets_file(gt, "ours", {"all": (34.0, 31.0, 37.0), "camouflaged": (20.0, 17.0, 23.0),
                              "distinct": (41.0, 36.0, 46.0)})
    table = tmp_path / "axis.md"
    main(["flow-axis", "--runs", str(dis), str(gt), "--out", str(tmp_path / "axis.png"), "--table", str(table)])
    assert table.read_text().splitlines() == [
        "| flow source | EPE (px) | > 3 px | ours mask AP all | ours mask AP camouflaged | ours mask AP distinct"
        " | boxinst mask AP all | boxinst mask AP camouflaged | boxinst mask AP distinct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| gt (oracle) | 0.000 | 10.0 % | 34.0 [31.0, 37.0] | 20.0 [17.0, 23.0] | 41.0 [36.0, 46.0] | – | – | – |",
        "| dis | 0.215 | 10.0 % | 30.5 [28.0, 34.0] | 12.2 [9.0, 15.5] | 40.0 [35.0, 45.0] | 20.0 | – | – |"]
    shutil.rmtree(dis / "results/eval/boxinst")
    with pytest.raises(FileNotFoundError, match="no run has results/eval/boxinst/metrics.json"):
        collect_flow_axis([dis, gt], "ours", "boxinst")


def test_default_run_plans_the_flow_axis_figure_from_the_listed_runs(tmp_path: Path) -> None:
    """`flow_axis_runs` adds rule figure_flow_axis to the default target, reading the listed run's files
    (without it the rule is not planned: test_workflow's test_dry_run_builds_the_dag)."""
    other = fake_run(tmp_path / "flow_gt", "gt", 0.0, 34.0, 0.0)
    subsets_file(other, "ours", {"all": (34.0, 31.0, 37.0)})
    work = tmp_path / "flow_dis"
    work.mkdir()
    run = snakemake(work, "-n", "-p", "--config", f'flow_axis_runs=["{other}"]')
    assert planned_jobs(run)["figure_flow_axis"] == 1
    assert f"--runs . {other} --experiment ours --baseline boxinst" in run.stdout
