# Path helpers shared by the rules. The only computation in workflow/ lives here.
import functools
import hashlib
import json
import math
import operator
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


# The stages (rules with outputs) and the configuration their jobs depend on: each stage's own config keys (those
# its params carry; dotted paths, "model" = the model section merged with the overrides of each experiment its job
# covers) and the stages whose outputs it reads in this config. tests/workflow/test_lineage.py checks the latter
# against the DAG's rule graph.
INFERENCE_KEYS = [f"evaluate.{key}" for key in config["evaluate"] if key != "subsets"]
READS_ANNOTATIONS = [] if config["dataset"]["root"] else ["synthetic"]
READS_CHECKPOINT = ["gma_checkpoint"] if config["flow"]["estimator"] == "gma" else []
READS_FLOW_GT = ["synthetic"] if config["flow"]["estimator"] == "gt" else []
STAGES = {
    "synthetic": (["dataset.synthetic"], []),
    "manifest": (["dataset.root"], READS_ANNOTATIONS),
    "split": (["dataset.root", "split"], READS_ANNOTATIONS),
    "gma_checkpoint": ([], []),
    "flow": (["dataset.root", "flow"], ["manifest", *READS_CHECKPOINT, *READS_FLOW_GT]),
    "flow_quality": (["flow"], ["manifest", "synthetic", *READS_CHECKPOINT]),
    "affinity": (["dataset.root", "affinity"], ["manifest", "flow"]),
    "frame_index": (["dataset.root", "flow.shard_size"], ["manifest", "split"]),
    "train": (
        ["dataset.root", "model", "train", "flow"],
        ["frame_index", "flow", "affinity"],
    ),
    "evaluate": (
        ["dataset.root", *INFERENCE_KEYS],
        ["train", "frame_index", "split", "flow"],
    ),
    "object_motion": (["evaluate.subsets.ring_px"], ["split", "flow"]),
    "subset_ap": (
        ["evaluate.subsets"],
        ["split", "evaluate", "object_motion", *READS_ANNOTATIONS],
    ),
    "tables": (["experiments"], ["evaluate", "subset_ap"]),
    "figure_tables": ([], ["tables"]),
    "figure_training_curves": (["experiments"], ["train"]),
    "figure_flow_quality": ([], ["flow_quality"]),
    "figure_masks": (
        ["dataset.root", "experiments"],
        ["split", "frame_index", "evaluate"],
    ),
    "figure_subset_ap": ([], ["subset_ap"]),
    "figure_flow_axis": (
        ["experiments", "flow_axis_runs"],
        ["flow_quality", "split", "evaluate", "subset_ap"],
    ),
    "figure_activations": (
        ["dataset.root", *INFERENCE_KEYS],
        ["train", "frame_index", "flow"],
    ),
}


def upstream_stages(stage):
    """The stages whose outputs `stage` reads, directly or through other stages (STAGES)."""
    found, todo = set(), list(STAGES[stage][1])
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += STAGES[name][1]
    return found


def config_value(path, experiments):
    """The config value at dotted `path`; "model": the merged model section of each of `experiments`."""
    if path == "model":
        return {
            exp: pipeline.config.experiment_model(config, exp) for exp in experiments
        }
    return functools.reduce(operator.getitem, path.split("."), config)


def lineage(stage, experiments=None):
    """A params function: the sha256 (16 hex digits) of the own config of every stage upstream of `stage`, for
    the job's experiment (wildcard exp), else `experiments`, else every experiment. An upstream edit changes
    it, so a rerun after an interrupted upstream job (its output deleted) plans that job again.
    """

    def digest(wildcards):
        exp = getattr(wildcards, "exp", None)
        exps = (
            [exp]
            if exp
            else list(config["experiments"] if experiments is None else experiments)
        )
        configs = {
            name: {path: config_value(path, exps) for path in STAGES[name][0]}
            for name in upstream_stages(stage)
        }
        text = json.dumps(configs, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return digest


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


def flow_axis_experiments():
    """The experiments the flow-axis figure reads: ours_r50's, then boxinst_r50's if there is one."""
    return [
        exp
        for exp in (experiment_of_row("ours_r50"), experiment_of_row("boxinst_r50"))
        if exp
    ]


def flow_axis_inputs():
    """The files `model.figures flow-axis` reads: flow quality, split and ours_r50's metrics and subset AP of
    this run and of each run in flow_axis_runs(); boxinst_r50's of this run only (BoxInst reads no flow).
    """
    ours, *baseline = flow_axis_experiments()
    files = [
        f"results/eval/{exp}/{f}"
        for exp in baseline
        for f in ("metrics.json", "subsets.json")
    ]
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
