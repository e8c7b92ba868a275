"""What one real SLURM node cannot show, against fake SLURM commands: multi-node training (the profile's
multi-node train job and the `srun torchrun` rendezvous that model.launch starts in it) and the GPU requests
(--gpus for GMA flow shards and evaluation, --gres per node for training). Everything a one-node cluster can
show (each CPU rule's partition, CPUs, memory and time limit, reruns, cancel, time and memory limits, Ctrl-C)
runs on a real SLURM in tests/slurm/test_slurm_cluster.py.

The fakes (sbatch, srun, sacct, squeue, sinfo, scontrol, sacctmgr, scancel) are small scripts the test writes
into tmp_path/bin; each calls `fake_main()` of fake_slurm.py. They record their arguments in tmp_path/slurm/*.jsonl,
and sbatch runs the submitted job on this machine in the background, as SLURM would on a node: with
SLURM_JOB_ID, SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST (every "node" is localhost). srun starts its tasks
here too, one process per task with SLURM_PROCID/SLURM_NODEID, so the two-"node" torchrun really meets at
its c10d rendezvous. Job states go to tmp_path/slurm/jobs/<id>.json, where sacct and squeue read them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import smk
from fake_slurm import ACCOUNT, CPU_PART, FAKES, GPU_PART, GPUS_PER_NODE, NODES, rule_of
from model.launch import slurm_allocation
from smk import REPO, copy_run, environment


def install_fakes(tmp_path: Path) -> dict[str, str]:
    """Write the fake commands into tmp_path/bin; the environment that puts them first on PATH."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name in FAKES:
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          "from fake_slurm import fake_main\nfake_main()\n")
        script.chmod(0o755)
    env = environment(FAKE_SLURM_DIR=str(state))
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def read_records(tmp_path: Path, name: str) -> list[dict]:
    """The JSON lines a fake recorded."""
    path = tmp_path / "slurm" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------------ the tests
def slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Fakes on PATH and the profile's site variables set."""
    env = install_fakes(tmp_path)
    env.update(MOWIS_SLURM_ACCOUNT=ACCOUNT, MOWIS_SLURM_CPU_PARTITION=CPU_PART, MOWIS_SLURM_GPU_PARTITION=GPU_PART,
               MOWIS_TRAIN_NODES=str(NODES), MOWIS_GPUS_PER_NODE=str(GPUS_PER_NODE), **extra)
    return env


def snakemake(workdir: Path, env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`snakemake <args> --profile workflow/profiles/slurm` in `workdir`, status checks every second or so."""
    return smk.snakemake(workdir, *args, "--profile", str(REPO / "workflow/profiles/slurm"),
                         "--seconds-between-status-checks", "1", "--slurm-init-seconds-before-status-checks", "1",
                         "--slurm-keep-successful-logs", env=env, timeout=timeout)


def check_common(sub: dict, workdir: Path) -> None:
    """What every submission carries: account, requeue, working directory, the jobstep command."""
    opts = sub["opts"]
    assert opts["--parsable"] is True and opts["--export"] == "ALL" and opts["--requeue"] is True, opts
    assert opts["-A"] == ACCOUNT and opts["-D"] == str(workdir), opts
    assert "--executor slurm-jobstep" in str(opts["--wrap"])


def test_multi_node_launch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a 2-node allocation whose SLURM_* variables the job step removed, model.launch finds the nodes with
    scontrol and starts one torchrun per node through srun, meeting at the first node (c10d)."""
    env = install_fakes(tmp_path)
    (tmp_path / "slurm/jobs").mkdir()
    (tmp_path / "slurm/jobs/4242.json").write_text(json.dumps({"name": "run", "state": "RUNNING", "nodes": 2}))
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="4242", CUDA_VISIBLE_DEVICES="0,1,2,3", MOWIS_RDZV_PORT="29511",
               FAKE_SRUN_RECORD_ONLY="1")
    run = subprocess.run([sys.executable, "-m", "model.launch", "--gpus", "0", "--threads", "32", "--",
                          "--out", "results/train/e"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (step,) = read_records(tmp_path, "srun")
    assert step["opts"] == {"--nodes": "2", "--ntasks": "2", "--ntasks-per-node": "1", "--cpus-per-task": "32",
                            "--kill-on-bad-exit": "1", "--gres": "gpu:4"}
    assert step["command"] == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--rdzv-backend=c10d",
                               "--rdzv-endpoint=localhost:29511", "--rdzv-id=4242", "--nproc-per-node=4",
                               "-m", "model.train", "--out", "results/train/e",
                               "--device", "cuda", "--workers", "7", "--threads", "1"]
    assert step["omp"] == "1"  # threads per process: 32 CPUs / 4 GPUs = 8 = 1 compute + 7 loader workers
    # one node: no srun, torchrun --standalone, as on a workstation
    (tmp_path / "slurm/jobs/4242.json").write_text(json.dumps({"name": "run", "state": "RUNNING", "nodes": 1}))
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SLURM_DIR", env["FAKE_SLURM_DIR"])
    assert slurm_allocation(env) is None
    assert slurm_allocation({k: v for k, v in env.items() if k != "SLURM_JOB_ID"}) is None


@pytest.mark.slow
def test_gma_flow_shard_asks_for_one_gpu_and_retries_with_more(tmp_path: Path) -> None:
    """With GMA a flow shard is a one-GPU job on the GPU partition; a failed attempt comes back with the
    profile's attempt-scaled runtime and memory (240 then 480 min, 32 then 64 GB), then the run fails."""
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/gma.pth").write_bytes(b"not needed: the fake node fails the flow job")
    (tmp_path / "tiny.yaml").write_text(
        "dataset:\n  synthetic: {videos: 2, frames: 2, height: 32, width: 32, classes: 1, max_objects: 1}\n"
        "flow:\n  estimator: gma\n  shard_size: 2\n  gma: {checkpoint: weights/gma.pth}\n")
    env = slurm_env(tmp_path, FAKE_SLURM_FAIL_RULE="flow")
    run = snakemake(tmp_path, env, "results/flow/shard_0.zarr", "--configfile", str(tmp_path / "tiny.yaml"),
                    "--retries", "1", timeout=600)  # the profile's 2 retries, cut to 1 to save time
    assert run.returncode != 0
    subs = read_records(tmp_path, "sbatch")
    assert [rule_of(s) for s in subs] == ["synthetic", "manifest", "flow", "flow"], run.stderr
    for attempt, sub in enumerate(subs[2:], start=1):
        check_common(sub, tmp_path)
        opts = sub["opts"]
        assert (opts["-p"], opts["--gpus"], opts["--cpus-per-task"]) == (GPU_PART, "1", "8"), opts
        assert (opts["-t"], opts["--mem"]) == (str(240 * attempt), str(32000 * attempt)), opts
        assert not {"--ntasks-per-gpu", "--ntasks", "--gres", "--nodes"} & set(opts), opts


@pytest.mark.slow
def test_multi_node_training_through_the_slurm_profile(tiny_run, tmp_path: Path) -> None:
    """On a copy of the shared tiny run (conftest.py) without ours' model and evaluation: the train job asks for
    2 nodes x 4 GPUs (--nodes, --ntasks-per-node=1, --gres per node) and fans out through srun to one torchrun per
    "node" that meet at a c10d rendezvous; evaluation asks for one GPU; the run completes."""
    work = copy_run(tiny_run.work, tmp_path / "work")
    shutil.rmtree(work / "results/train/ours")
    shutil.rmtree(work / "results/eval/ours")
    (work / "logs/train/ours.log").unlink()
    env = slurm_env(tmp_path)
    run = snakemake(work, env, "results/eval/ours/metrics.json", "--configfile", str(work / "tiny.yaml"))
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    subs = read_records(tmp_path, "sbatch")
    assert [rule_of(sub) for sub in subs] == ["train", "evaluate"], run.stderr[-5000:]  # the rest is up to date
    for sub in subs:
        check_common(sub, work)
    (train,) = [sub for sub in subs if rule_of(sub) == "train"]
    opts = train["opts"]
    assert (opts["-p"], opts["--nodes"], opts["--ntasks"], opts["--ntasks-per-node"]) == (
        GPU_PART, str(NODES), str(NODES), "1"), opts
    assert (opts["--gres"], opts["--cpus-per-task"]) == (f"gpu:{GPUS_PER_NODE}", "32"), opts
    assert (opts["-t"], opts["--mem"]) == ("1440", "200000"), opts
    assert not {"--gpus", "--ntasks-per-gpu"} & set(opts), opts  # --gpus would be a job total
    (evaluate,) = [sub for sub in subs if rule_of(sub) == "evaluate"]
    opts = evaluate["opts"]
    assert (opts["-p"], opts["--gpus"], opts["--cpus-per-task"]) == (GPU_PART, "1", "8"), opts
    assert (opts["-t"], opts["--mem"]) == ("120", "32000"), opts
    assert not {"--ntasks-per-gpu", "--ntasks", "--gres", "--nodes"} & set(opts), opts

    # train's shell ran srun itself: one launcher per node, torchrun meeting at the first node
    (step,) = [s for s in read_records(tmp_path, "srun") if s["job"] == train["id"]]
    assert step["opts"] == {"--nodes": str(NODES), "--ntasks": str(NODES), "--ntasks-per-node": "1",
                            "--cpus-per-task": str(min(32, len(os.sched_getaffinity(0)))),  # capped by
                            "--kill-on-bad-exit": "1"}                                    # the job step
    port = 29500 + int(step["job"]) % 1000
    assert Path(step["command"][0]).name.startswith("python"), step["command"]  # the job's python
    assert step["command"][1:10] == ["-m", "torch.distributed.run", f"--nnodes={NODES}", "--rdzv-backend=c10d",
                                     f"--rdzv-endpoint=localhost:{port}", f"--rdzv-id={step['job']}",
                                     "--nproc-per-node=1", "-m", "model.train"]
    assert f"rank 0 of {NODES} on cpu" in (work / "logs/train/ours.log").read_text()
    assert (work / "results/eval/ours/metrics.json").exists()


def local_gpu_claims(tmp_path: Path, estimator: str) -> dict[str, set[int]]:
    """The `gpu` each job claims in a dry run through the local profile with MOWIS_GPUS=2, per rule."""
    tmp_path.mkdir()
    config = tmp_path / f"{estimator}.yaml"
    config.write_text(f"flow:\n  estimator: {estimator}\n")
    run = smk.snakemake(tmp_path, "all", "results/tables", "-n", "--profile", str(REPO / "workflow/profiles/local"),
                        "--configfile", str(config), env=environment(MOWIS_GPUS="2"), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    claims: dict[str, set[int]] = {}
    for block in run.stdout.split("\nrule ")[1:]:
        rule = block.split(":")[0]
        resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
        gpu = [int(r.split("=")[1]) for r in resources.split(", ") if r.startswith("gpu=")]
        claims.setdefault(rule, set()).add(gpu[0] if gpu else 0)
    return claims


def test_local_profile_gpu_jobs_claim_the_whole_cap(tmp_path: Path) -> None:
    """Workstation with 2 GPUs: GMA flow, flow_quality and evaluate (one device each, unpinned) claim both units
    of the cap, so no two run at once; train takes both for torchrun; CPU jobs (and DIS flow) claim none."""
    gma = local_gpu_claims(tmp_path / "gma", "gma")
    assert {rule: gma[rule] for rule in ("flow", "flow_quality", "evaluate", "train")} == {
        "flow": {2}, "flow_quality": {2}, "evaluate": {2}, "train": {2}}
    assert all(gma[rule] == {0} for rule in ("synthetic", "split", "affinity", "frame_index", "tables"))
    dis = local_gpu_claims(tmp_path / "dis", "dis")
    assert dis["flow"] == dis["flow_quality"] == {0} and dis["train"] == {2}
