# Rules of the dataset stage.


rule synthetic:
    """The embedded synthetic camouflage dataset (YouTube-VIS layout + ground-truth flow); common.smk's
    annotations() points here when dataset.root is null."""
    output:
        annotations="results/synthetic/train.json",
        frames=directory("results/synthetic/JPEGImages"),
        flow_gt=directory("results/synthetic/flow_gt"),
    log:
        "logs/synthetic/synthetic.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=section("dataset", "synthetic"),
    shell:
        "python -m pipeline.synthetic --params {params.cfg:q} --out results/synthetic 2> {log:q}"


rule manifest:
    """train.json validated once (fields and frame files) into a compact manifest without masks
    (pipeline/manifest.py): the flow, affinity and frame index jobs read it, not train.json.
    """
    input:
        annotations=annotations(),
    output:
        manifest_file(),
    log:
        "logs/manifest/manifest.log",
    conda:
        "../../envs/data.yaml"
    params:
        root=root_of_input,
        upstream=lineage("manifest"),
    shell:
        "python -m pipeline.manifest --root {params.root:q} --out {output:q} 2> {log:q}"


rule split:
    """The reconstructed train_train / train_val split and train_val's image-level COCO ground truth
    (method §1.2-1.3); summary.json puts our counts beside the paper's."""
    input:
        annotations=annotations(),
    output:
        train_train="results/split/train_train.json",
        train_val="results/split/train_val.json",
        train_val_coco="results/split/train_val_coco.json",
        summary="results/split/summary.json",
    log:
        "logs/split/split.log",
    benchmark:
        "results/benchmarks/split/split.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        cfg=section("split"),
        root=root_of_input,
        upstream=lineage("split"),
    shell:
        "python -m pipeline.split --root {params.root:q} --params {params.cfg:q} --out-dir results/split 2> {log:q}"
