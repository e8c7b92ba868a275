# Rules of the evaluation stage: COCO AP per experiment, subset AP with bootstrap intervals, the paper's tables.


rule evaluate:
    """Mask and box COCO AP of one trained experiment on the train_val frames (method §6)."""
    input:
        checkpoint="results/train/{exp}/final.pt",
        index="results/index/train_val.h5",
        gt="results/split/train_val_coco.json",
        flow=flow_stores(),
    output:
        metrics="results/eval/{exp}/metrics.json",
        results="results/eval/{exp}/coco_results.json",
    log:
        "logs/evaluate/{exp}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}.tsv"
    conda:
        "../../envs/train.yaml"
    # One thread on a CPU-only machine: in the demo the first experiment's evaluation then runs beside the
    # second's training instead of waiting for both cores; the profiles give it more (workflow/profiles/).
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=inference_section(),
        backend=config["evaluate"]["coco_backend"],
        frames=frames_dir(),
        dataset=config["dataset"]["root"] or "synthetic camouflage",
        upstream=lineage("evaluate"),
    shell:
        "python -m model.evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --gt {input.gt:q}"
        " --frames {params.frames:q} --flow results/flow --params {params.cfg:q} --experiment {wildcards.exp}"
        " --dataset {params.dataset:q} --out {output.metrics:q} --results {output.results:q}"
        " --threads {threads} --coco-backend {params.backend} 2> {log:q}"


rule object_motion:
    """Each train_val object's motion relative to the background around it (px/frame), from the flow stores."""
    input:
        gt="results/split/train_val_coco.json",
        flow=flow_stores(),
    output:
        "results/eval/object_motion.json",
    log:
        "logs/evaluate/object_motion.log",
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        ring_px=config["evaluate"]["subsets"]["ring_px"],
        upstream=lineage("object_motion"),
    shell:
        "python -m model.object_motion --gt {input.gt:q} --flow {input.flow:q} --ring-px {params.ring_px}"
        " --out {output:q} 2> {log:q}"


rule subset_ap:
    """Mask and box AP of one experiment on all, camouflaged, distinct and per-motion-bin objects, with
    bootstrap intervals over the train_val videos."""
    input:
        gt="results/split/train_val_coco.json",
        results="results/eval/{exp}/coco_results.json",
        metrics="results/eval/{exp}/metrics.json",
        motion="results/eval/object_motion.json",
        camouflage=synthetic_annotations(),
    output:
        "results/eval/{exp}/subsets.json",
    log:
        "logs/evaluate/subset_ap_{exp}.log",
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        cfg=section("evaluate", "subsets"),
        upstream=lineage("subset_ap"),
    shell:
        "python -m model.subsets --gt {input.gt:q} --results {input.results:q} --metrics {input.metrics:q}"
        " --motion {input.motion:q} --camouflage {input.camouflage:q} --params {params.cfg:q} --out {output:q}"
        " 2> {log:q}"


rule tables:
    """The paper's tables 1-4 with this run's numbers and intervals beside the paper's, per-class AP, and the
    subset comparison."""
    input:
        metrics=expand(
            "results/eval/{exp}/metrics.json", exp=list(config["experiments"])
        ),
        subsets=expand(
            "results/eval/{exp}/subsets.json", exp=list(config["experiments"])
        ),
    output:
        directory("results/tables"),
    log:
        "logs/tables/tables.log",
    conda:
        "../../envs/train.yaml"
    params:
        experiments=section("experiments"),
        upstream=lineage("tables"),
    shell:
        "python -m model.tables --experiments {params.experiments:q} --metrics {input.metrics:q}"
        " --subsets {input.subsets:q} --out-dir {output:q} 2> {log:q}"
