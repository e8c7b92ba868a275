# Rules of the train stage: the trainer's frame index, and one training job per experiment.


rule frame_index:
    """Per-frame index of one split (pipeline/index.py): frames, shard, size, ragged boxes and classes."""
    input:
        manifest=manifest_file(),
        split="results/split/{split}.json",
    output:
        "results/index/{split}.h5",
    log:
        "logs/frame_index/{split}.log",
    benchmark:
        "results/benchmarks/frame_index/{split}.tsv"
    wildcard_constraints:
        split="train_train|train_val",
    conda:
        "../../envs/data.yaml"
    threads: 1
    params:
        shard_size=section("flow", "shard_size"),
        root=dataset_root(),
        upstream=lineage("frame_index"),
    shell:
        "python -m pipeline.index --root {params.root:q} --manifest {input.manifest:q} --split {input.split:q}"
        " --shard-size {params.shard_size} --out {output:q} 2> {log:q}"


rule train:
    """Train one experiment with torchrun (model/launch.py): one process per GPU of the `gpu` resource, or
    one CPU process when it is 0. Checkpoints in results/train/{exp}/checkpoints/ let a rerun resume.
    On a GPU machine: --set-resources train:gpu=8 --set-threads train=64."""
    input:
        index="results/index/train_train.h5",  # frames, boxes and classes of train_train (from split)
        flow=flow_stores(),
        affinity=affinity_stores(),
    output:
        "results/train/{exp}/final.pt",
    log:
        "logs/train/{exp}.log",
    benchmark:
        "results/benchmarks/train/{exp}.tsv"
    wildcard_constraints:
        exp="|".join(config["experiments"]) or "no-experiments",
    conda:
        "../../envs/train.yaml"
    # One thread per CPU job: on a small machine the experiments train side by side (the synthetic demo's
    # two fill two cores); the profiles give GPU training its threads (workflow/profiles/).
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60 * 24,
    params:
        model=experiment_model,
        train=section("train"),
        flow=section("flow"),  # kept in final.pt for predict; a flow edit retrains anyway (new stores)
        frames=frames_dir(),
        upstream=lineage("train"),
    shell:
        "python -m model.launch --gpus {resources.gpu} --threads {threads} --"
        " --model-params {params.model:q} --train-params {params.train:q} --index {input.index:q}"
        " --frames {params.frames:q} --flow results/flow --affinity results/affinity"
        " --flow-params {params.flow:q} --out results/train/{wildcards.exp} 2> {log:q}"
