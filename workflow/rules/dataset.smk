# Rules of the dataset stage.


rule synthetic:
    """The embedded synthetic camouflage dataset (YouTube-VIS layout + ground-truth flow); common.smk's
    annotations() points here when dataset.root is null."""
    output:
        annotations="results/synthetic/train.json",
        frames=directory("results/synthetic/JPEGImages"),
        flow_gt=directory("results/synthetic/flow_gt"),
    params:
        cfg=section("dataset", "synthetic"),
    log:
        "logs/synthetic/synthetic.log",
    shell:
        "python -m pipeline.synthetic --params {params.cfg:q} --out results/synthetic 2> {log}"
