# Rules of the flow stage.


# The checkpoint download runs where snakemake runs (a cluster's login node is online, its nodes often not).
localrules:
    gma_checkpoint,


if config["flow"]["estimator"] == "gt" and config["dataset"]["root"]:
    raise WorkflowError(
        f"flow.estimator: gt stores the synthetic dataset's ground-truth flow, and dataset.root "
        f"{config['dataset']['root']} (YouTube-VIS) has none: set flow.estimator to dis, gma or raft"
    )

FLOW_ON_GPU = 1 if config["flow"]["estimator"] in ("gma", "raft") else 0
FLOW_GT = ["results/synthetic/flow_gt"] if config["flow"]["estimator"] == "gt" else []


rule flow:
    """RGB-encoded optical flow of one shard of videos (method §2): one Zarr v3 store per shard, written to a
    temporary folder and renamed when complete. GMA and RAFT run on a GPU when one is visible; DIS on the
    CPU; gt encodes the synthetic ground truth (results/synthetic/flow_gt)."""
    input:
        manifest=manifest_file(),
        checkpoint=gma_checkpoint_if_used(),
        flow_gt=FLOW_GT,
    output:
        directory(flow_store("{k}")),
    log:
        stderr="logs/flow/shard_{k}.log",
        summary="logs/flow/shard_{k}.json",
    benchmark:
        "results/benchmarks/flow/shard_{k}.tsv"
    wildcard_constraints:
        k=r"\d+",
    conda:
        "../../envs/flow.yaml"
    threads: 2
    resources:
        gpu=FLOW_ON_GPU,
    params:
        cfg=section("flow"),
        num_videos=num_videos(),
        root=dataset_root(),
        upstream=lineage("flow"),
    shell:
        "python -m pipeline.flow --root {params.root:q} --manifest {input.manifest:q} --shard {wildcards.k}"
        " --num-videos {params.num_videos} --params {params.cfg:q} --out {output:q}"
        " --log-json {log.summary:q} --threads {threads} 2> {log.stderr:q}"


rule gma_checkpoint:
    """The configured GMA checkpoint, when missing: downloaded from the official repository
    (github.com/zacjiang/GMA, checkpoints/) and checked to load strictly; offline, the log names the file,
    the URL and where to put it. Needed only when flow.estimator is gma."""
    output:
        config["flow"]["gma"]["checkpoint"],
    log:
        "logs/gma_checkpoint/gma_checkpoint.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "python -m pipeline.gma_checkpoint --dest {output:q} 2> {log:q}"


if not config["dataset"]["root"]:

    rule flow_quality:
        """The configured estimator scored against the synthetic ground-truth flow: EPE and the share of
        pixels with an error above 3 px, per video and overall (0 for gt, the oracle).
        """
        input:
            manifest=manifest_file(),
            flow_gt="results/synthetic/flow_gt",
            checkpoint=gma_checkpoint_if_used(),
        output:
            "results/flow/quality.json",
        log:
            "logs/flow_quality/flow_quality.log",
        conda:
            "../../envs/flow.yaml"
        threads: 2
        resources:
            gpu=FLOW_ON_GPU,
        params:
            cfg=section("flow"),
            root=lambda wildcards, input: os.path.dirname(input.flow_gt),
            upstream=lineage("flow_quality"),
        shell:
            "python -m pipeline.flow_quality --root {params.root:q} --manifest {input.manifest:q}"
            " --gt-root {params.root:q} --params {params.cfg:q} --out {output:q} --threads {threads} 2> {log:q}"
