"""benchmarks/scale.py: the extrapolation's arithmetic on a hand-worked input, and how it reads Snakemake's output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.scale import (FullRun, Machine, Measured, extrapolate, fit_line, job_stats, read_benchmarks,
                              store_totals)

MEASURED = Measured(split_cpu_s=10.0, index_cpu_s=20.0, flow_a_s=4.0, flow_b_s=0.5, flow_estimate_share=0.8,
                    affinity_a_s=2.0, affinity_b_s=0.01, affinity_utilisation=1.0)
RUN = FullRun(videos=100, frames=3000, train_val_frames=500, shard_size=10, experiments=2, iters=1000, batch=16,
              gma_fps=5.0, train_s_per_image=0.1, eval_gpu_s_per_frame=0.05, eval_cpu_s_per_frame=0.24)
MACHINE = Machine("test", cores=16, gpus=2, gpu_job_slots=1, flow_threads=4, affinity_threads=2,
                  evaluate_threads=8, cpu_job_cap=16)


def test_extrapolation_by_hand():
    """10 shards of 300 frames. flow: 4 + 300 * max(1/5, 0.5 * 0.2 / 4) = 64 s, one at a time: 640 s.
    affinity: (2 + 0.01 * 300) / 1 = 5 s, 8 at a time (16 cores / 2 threads): 2 rounds, 10 s. train:
    1000 * 16 * 0.1 / 2 GPUs = 800 s per experiment, 2 in turn: 1600 s. evaluate: 500 * max(0.05, 0.24 / 8)
    = 25 s, 2 in turn: 50 s. split 10 s, frame_index 20 s (two side by side). Total 2330 s."""
    est = extrapolate(MEASURED, RUN, MACHINE)
    expected_s = {"split": 10, "frame_index": 20, "flow (GMA on GPU)": 640, "affinity": 10, "train": 1600,
                  "evaluate": 50}
    for stage, seconds in expected_s.items():
        assert est[stage]["hours"] == pytest.approx(seconds / 3600), stage
    assert est["flow (GMA on GPU)"]["job_s"] == pytest.approx(64.0)
    assert est["affinity"]["slots"] == 8
    assert est["total"]["hours"] == pytest.approx(2330 / 3600)


def test_extrapolation_cpu_bound_flow():
    """With one flow thread and the estimator 20 % of the CPU, encoding (0.4 s/frame) outweighs GMA (0.2 s):
    4 + 300 * 0.4 = 124 s per shard; 8 GPU slots run the 10 shards in 2 rounds."""
    est = extrapolate(dataclasses.replace(MEASURED, flow_estimate_share=0.2), RUN,
                      dataclasses.replace(MACHINE, flow_threads=1, gpu_job_slots=8))
    assert est["flow (GMA on GPU)"]["job_s"] == pytest.approx(124.0)
    assert est["flow (GMA on GPU)"]["hours"] == pytest.approx(248 / 3600)


def test_fit_and_store_totals():
    """A line through (60, 10) and (160, 30): y = -2 + 0.2 x. Stores: 10 groups * 1000 B + 3000 frames * 50 B,
    10 * 3 + 3000 * 1 files."""
    assert fit_line(60, 10, 160, 30) == pytest.approx((-2.0, 0.2))
    assert store_totals(1000, 50, 3, 1, frames=3000, groups=10) == pytest.approx((160000, 3030))


def test_reads_snakemake_outputs(tmp_path: Path):
    """A dry run's job stats table and a benchmark TSV as Snakemake writes them."""
    stdout = ("Building DAG of jobs...\nJob stats:\njob            count\n-----------  -------\naffinity          35\n"
              "flow              35\nsplit              1\ntotal             71\n\nReasons:\n")
    assert job_stats(stdout) == {"affinity": 35, "flow": 35, "split": 1}
    folder = tmp_path / "results" / "benchmarks" / "flow"
    folder.mkdir(parents=True)
    (folder / "shard_0.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t812.3\t2000.1\t700.0\t710.2\t1.5\t30.25\t95.0\t11.75\n")
    assert read_benchmarks(tmp_path) == {"flow/shard_0": {"s": 12.5, "cpu_time": 11.75, "max_rss": 812.3,
                                                          "io_in": 1.5, "io_out": 30.25}}
