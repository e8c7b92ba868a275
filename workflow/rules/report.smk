# Rules of the Snakemake report (`snakemake --report report.html`): figures under results/figures/, each
# marked for the report with a caption (workflow/report/*.rst) and a category. `snakemake figures` makes them.


report: "../report/workflow.rst"


rule figures:
    """Every figure of the report this config can make."""
    input:
        figure_targets(),


rule figure_tables:
    """The paper's tables (rule tables' markdown) as one HTML page for the report."""
    input:
        "results/tables",
    output:
        report(
            "results/figures/tables.html",
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        "logs/figures/tables.log",
    conda:
        "../../envs/train.yaml"
    params:
        upstream=lineage("figure_tables"),
    shell:
        "python -m model.figures tables --tables {input:q} --out {output:q} 2> {log:q}"


rule figure_training_curves:
    """Loss terms and learning rate of every experiment against the iteration (metrics.jsonl beside final.pt)."""
    input:
        final=expand("results/train/{exp}/final.pt", exp=list(config["experiments"])),
    output:
        report(
            "results/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "logs/figures/training_curves.log",
    conda:
        "../../envs/train.yaml"
    params:
        experiments=section("experiments"),
        upstream=lineage("figure_training_curves"),
    shell:
        "python -m model.figures curves --final {input.final:q} --experiments {params.experiments:q}"
        " --out {output:q} 2> {log:q}"


if not config["dataset"]["root"]:

    rule figure_flow_quality:
        """The flow estimator's end-point error per synthetic video (rule flow_quality)."""
        input:
            "results/flow/quality.json",
        output:
            report(
                "results/figures/flow_quality.png",
                caption="../report/flow_quality.rst",
                category="Flow",
            ),
        log:
            "logs/figures/flow_quality.log",
        conda:
            "../../envs/train.yaml"
        params:
            upstream=lineage("figure_flow_quality"),
        shell:
            "python -m model.figures flow-quality --quality {input:q} --out {output:q} 2> {log:q}"


if experiment_of_row("boxinst_r50") and experiment_of_row("ours_r50"):
    # BoxInst's and ours' R-50 experiments, side by side in Fig. 1 and the subset AP comparison
    PAPER_PAIR = [experiment_of_row(row) for row in ("boxinst_r50", "ours_r50")]

    rule figure_masks:
        """Paper Fig. 1: ground truth, BoxInst and ours over a few train_val frames (the evaluated detections)."""
        input:
            gt="results/split/train_val_coco.json",
            index="results/index/train_val.h5",
            results=[f"results/eval/{exp}/coco_results.json" for exp in PAPER_PAIR],
            metrics=[f"results/eval/{exp}/metrics.json" for exp in PAPER_PAIR],
        output:
            report(
                "results/figures/fig1_masks.png",
                caption="../report/fig1_masks.rst",
                category="Qualitative",
            ),
        log:
            "logs/figures/fig1_masks.log",
        conda:
            "../../envs/train.yaml"
        params:
            frames=frames_dir(),
            experiments=section("experiments"),
            upstream=lineage("figure_masks", PAPER_PAIR),
        shell:
            "python -m model.figures masks --gt {input.gt:q} --index {input.index:q} --frames {params.frames:q}"
            " --results {input.results:q} --experiments {params.experiments:q} --out {output:q} 2> {log:q}"

    rule figure_subset_ap:
        """BoxInst vs Ours mask and box AP per object subset, with bootstrap intervals (rule subset_ap)."""
        input:
            [f"results/eval/{exp}/subsets.json" for exp in PAPER_PAIR],
        output:
            report(
                "results/figures/subset_ap.png",
                caption="../report/subset_ap.rst",
                category="Tables",
            ),
        log:
            "logs/figures/subset_ap.log",
        conda:
            "../../envs/train.yaml"
        params:
            upstream=lineage("figure_subset_ap", PAPER_PAIR),
        shell:
            "python -m model.figures subsets --subsets {input:q} --out {output:q} 2> {log:q}"


if flow_axis_runs():

    rule figure_flow_axis:
        """The flow-quality axis: this run's and the runs of config `flow_axis_runs` (other flow sources, same
        data and split) as EPE against mask AP of ours_r50, the figure and a table per subset.
        """
        input:
            flow_axis_inputs(),
        output:
            figure=report(
                "results/figures/flow_axis.png",
                caption="../report/flow_axis.rst",
                category="Flow",
            ),
            table="results/figures/flow_axis.md",
        log:
            "logs/figures/flow_axis.log",
        conda:
            "../../envs/train.yaml"
        params:
            runs=[".", *flow_axis_runs()],
            experiment=experiment_of_row("ours_r50"),
            baseline=experiment_of_row("boxinst_r50") or "",
            upstream=lineage("figure_flow_axis", flow_axis_experiments()),
        shell:
            "python -m model.figures flow-axis --runs {params.runs:q} --experiment {params.experiment:q}"
            " --baseline {params.baseline:q} --out {output.figure:q} --table {output.table:q} 2> {log:q}"


if experiment_of_row("ours_r50"):

    rule figure_activations:
        """Paper Fig. 3: appearance vs motion activations (image- and flow-stream FPN P3) of the ours_r50 model."""
        input:
            checkpoint=f"results/train/{experiment_of_row('ours_r50')}/final.pt",
            index="results/index/train_val.h5",
            flow=flow_stores(),
        output:
            report(
                "results/figures/fig3_activations.png",
                caption="../report/fig3_activations.rst",
                category="Qualitative",
            ),
        log:
            "logs/figures/fig3_activations.log",
        conda:
            "../../envs/train.yaml"
        params:
            cfg=inference_section(),
            frames=frames_dir(),
            upstream=lineage("figure_activations", [experiment_of_row("ours_r50")]),
        shell:
            "python -m model.figures activations --checkpoint {input.checkpoint:q} --index {input.index:q}"
            " --frames {params.frames:q} --flow results/flow --params {params.cfg:q} --out {output:q} 2> {log:q}"
