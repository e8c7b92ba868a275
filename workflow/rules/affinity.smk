# Rules of the affinity stage.


rule affinity:
    """Packed colour and flow neighbour masks of one shard's frames (method §3), on the stride-4 grid."""
    input:
        manifest=manifest_file(),
        flow=flow_store("{k}"),
    output:
        directory("results/affinity/shard_{k}.zarr"),
    log:
        stderr="logs/affinity/shard_{k}.log",
        summary="logs/affinity/shard_{k}.json",
    benchmark:
        "results/benchmarks/affinity/shard_{k}.tsv"
    wildcard_constraints:
        k=r"\d+",
    conda:
        "../../envs/data.yaml"
    threads: 1
    params:
        cfg=section("affinity"),
        root=dataset_root(),
        upstream=lineage("affinity"),
    shell:
        "python -m pipeline.affinity --root {params.root:q} --manifest {input.manifest:q}"
        " --shard {wildcards.k} --flow {input.flow:q} --params {params.cfg:q} --out {output:q}"
        " --log-json {log.summary:q} --threads {threads} 2> {log.stderr:q}"
