# A small workflow for the fault tests on the real cluster (tests/slurm/test_slurm_cluster.py), run through
# workflow/profiles/slurm: a job that finishes, jobs that wait (to be cancelled or interrupted), one that
# outlives its time limit and one that outgrows its memory.

# seconds a `wait` job sleeps before it writes its output
HOLD = int(config.get("hold", 0))


rule quick:
    """Finishes at once."""
    output:
        "quick.txt",
    shell:
        "echo done > {output}"


rule wait:
    """Sleeps HOLD seconds, then writes its output; asks mem_mb = config wait_mem_mb (default 1000)."""
    output:
        "wait/{name}.txt",
    resources:
        mem_mb=int(config.get("wait_mem_mb", 1000)),
    shell:
        "sleep {HOLD} && echo done > {output}"


rule overtime:
    """Runs 5 minutes: longer than a time limit of 1 minute."""
    output:
        "overtime.txt",
    shell:
        "sleep 300 && echo done > {output}"


rule greedy:
    """Holds 1 GB of memory for 10 s."""
    output:
        "greedy.txt",
    shell:
        "python -c 'import time; block = b\"x\" * (1 << 30); time.sleep(10)' && echo done > {output}"
