# Path helpers shared by the rules. The only computation in workflow/ lives here.
import json
import math
import os

import pipeline.config


def section(*keys):
    """The config subsection at `keys`, as canonical JSON (sorted keys) for a rule's params."""
    node = config
    for key in keys:
        node = node[key]
    return json.dumps(node, sort_keys=True)


def inference_section():
    """The evaluate section less subsets and coco_backend (rules evaluate, figure_activations), as canonical
    JSON: editing subset AP settings reruns no inference; the backend is a param of rule evaluate
    alone."""
    return json.dumps(
        {
            k: v
            for k, v in config["evaluate"].items()
            if k not in ("subsets", "coco_backend")
        },
        sort_keys=True,
    )


def synthetic_annotations():
    """train.json of the synthetic dataset, whose info lists the camouflaged tracks; none on real data."""
    return [] if config["dataset"]["root"] else [annotations()]


def dataset_root():
    """The YouTube-VIS folder: the configured copy, or the synthetic dataset the workflow generates."""
    root = config["dataset"]["root"]
    return root if root else "results/synthetic"


def annotations():
    """The dataset's train.json (an existing file, or the synthetic rule's output)."""
    return os.path.join(dataset_root(), "train.json")


def manifest_file():
    """The dataset's manifest, written by the manifest rule: train.json without masks, validated once."""
    return "results/manifest.json"


def root_of_input(wildcards, input):
    """The dataset root, for a shell command's --root: the folder of the rule's input.annotations."""
    return os.path.dirname(input.annotations)


def frames_dir():
    """The dataset's frames: <root>/JPEGImages/<video>/<frame>.jpg."""
    return os.path.join(dataset_root(), "JPEGImages")


def num_videos():
    """Videos in the dataset, known before any job runs: one folder per video under JPEGImages/."""
    if not config["dataset"]["root"]:
        return config["dataset"]["synthetic"]["videos"]
    frames_dir = os.path.join(config["dataset"]["root"], "JPEGImages")
    if not os.path.isdir(frames_dir):
        raise WorkflowError(
            f"dataset.root: {frames_dir} is not a folder (expected YouTube-VIS 2019 train)"
        )
    return sum(1 for entry in os.scandir(frames_dir) if entry.is_dir())


def shard_ids():
    """Shard k holds videos [k*S, (k+1)*S) of train.json's videos sorted by id (S = flow.shard_size)."""
    return list(range(math.ceil(num_videos() / config["flow"]["shard_size"])))


def flow_store(k):
    """The flow store of shard k (rule flow)."""
    return f"results/flow/shard_{k}.zarr"


def flow_stores():
    """Every shard's flow store."""
    return [flow_store(k) for k in shard_ids()]


def gma_checkpoint_if_used():
    """The configured GMA checkpoint when flow.estimator is gma (rule gma_checkpoint fetches it), else none."""
    return (
        [config["flow"]["gma"]["checkpoint"]]
        if config["flow"]["estimator"] == "gma"
        else []
    )


def experiment_model(wildcards):
    """The model section with experiment `wildcards.exp`'s overrides (checked when the workflow started), as
    canonical JSON (rule train's params)."""
    return json.dumps(
        pipeline.config.experiment_model(config, wildcards.exp), sort_keys=True
    )


def affinity_store(k):
    """The affinity store of shard k (rule affinity)."""
    return f"results/affinity/shard_{k}.zarr"


def affinity_stores():
    """Every shard's affinity store (rule affinity)."""
    return [affinity_store(k) for k in shard_ids()]


def final_targets():
    """What `snakemake` with no target builds."""
    targets = ["results/split/summary.json", "results/tables"]
    if not config["dataset"]["root"]:
        targets.append(
            "results/flow/quality.json"
        )  # the flow estimator scored on synthetic ground truth
    return targets + figure_targets()  # the report's figures (report.smk)


def experiment_of_row(row):
    """The first experiment (config order) reproducing the paper's row `row`, or None."""
    return next(
        (name for name, exp in config["experiments"].items() if exp["paper"] == row),
        None,
    )


def figure_targets():
    """The report's figures this config can make: tables and curves always (with experiments), flow quality on
    the synthetic data, Fig. 1 and the subset AP comparison with both boxinst_r50 and ours_r50 experiments, Fig. 3
    with ours_r50."""
    targets = ["results/figures/tables.html"]
    if config["experiments"]:
        targets.append("results/figures/training_curves.png")
    if not config["dataset"]["root"]:
        targets.append("results/figures/flow_quality.png")
    if experiment_of_row("boxinst_r50") and experiment_of_row("ours_r50"):
        targets += ["results/figures/fig1_masks.png", "results/figures/subset_ap.png"]
    if experiment_of_row("ours_r50"):
        targets.append("results/figures/fig3_activations.png")
    if flow_axis_runs():
        targets.append("results/figures/flow_axis.png")
    return targets


def flow_axis_runs():
    """The other runs of the flow-quality axis (config `flow_axis_runs`) on the synthetic data with an ours_r50
    experiment; [] otherwise (no figure)."""
    if config["dataset"]["root"] or not experiment_of_row("ours_r50"):
        return []
    return config.get("flow_axis_runs") or []


def flow_axis_inputs():
    """The files `model.figures flow-axis` reads: flow quality, split and ours_r50's metrics and subset AP of
    this run and of each run in flow_axis_runs(); boxinst_r50's of this run only (BoxInst reads no flow).
    """
    ours, boxinst = experiment_of_row("ours_r50"), experiment_of_row("boxinst_r50")
    files = (
        [f"results/eval/{boxinst}/{f}" for f in ("metrics.json", "subsets.json")]
        if boxinst
        else []
    )
    for run in [".", *flow_axis_runs()]:
        files += [
            os.path.normpath(f"{run}/results/{f}")
            for f in (
                "flow/quality.json",
                "split/train_val_coco.json",
                f"eval/{ours}/metrics.json",
                f"eval/{ours}/subsets.json",
            )
        ]
    return files
