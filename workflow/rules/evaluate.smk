# Rules of the evaluation stage: COCO AP per experiment, then the paper's tables.


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
    params:
        cfg=section("evaluate"),
        frames=frames_dir(),
        dataset=config["dataset"]["root"] or "synthetic camouflage",
    log:
        "logs/evaluate/{exp}.log",
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m model.evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --gt {input.gt:q}"
        " --frames {params.frames:q} --flow results/flow --params {params.cfg:q} --experiment {wildcards.exp}"
        " --dataset {params.dataset:q} --out {output.metrics:q} --results {output.results:q}"
        " --workers {threads} 2> {log:q}"


rule tables:
    """The paper's tables 1-4 with this run's numbers beside the paper's."""
    input:
        metrics=expand("results/eval/{exp}/metrics.json", exp=list(config["experiments"])),
    output:
        directory("results/tables"),
    params:
        experiments=section("experiments"),
    log:
        "logs/tables/tables.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m model.tables --experiments {params.experiments:q} --metrics {input.metrics:q}"
        " --out-dir {output:q} 2> {log:q}"
