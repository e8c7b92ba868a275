"""What one real SLURM node cannot show, against fake SLURM commands: multi-node training (the profile's
multi-node train job and the `srun torchrun` rendezvous that model.launch starts in it) and the GPU requests
(--gpus for GMA flow shards and evaluation, --gres per node for training). Everything a one-node cluster can
show (each CPU rule's partition, CPUs, memory and time limit, reruns, cancel, time and memory limits, Ctrl-C)
runs on a real SLURM in tests/slurm/test_slurm_cluster.py.

The fakes (sbatch, srun, sacct, squeue, sinfo, scontrol, sacctmgr, scancel) are small scripts the test writes
into tmp_path/bin; each calls `fake_main()` below. They record their arguments in tmp_path/slurm/*.jsonl,
and sbatch runs the submitted job on this machine in the background, as SLURM would on a node: with
SLURM_JOB_ID, SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST (every "node" is localhost). srun starts its tasks
here too, one process per task with SLURM_PROCID/SLURM_NODEID, so the two-"node" torchrun really meets at
its c10d rendezvous. Job states go to tmp_path/slurm/jobs/<id>.json, where sacct and squeue read them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import smk
from model.launch import slurm_allocation
from smk import REPO, TINY, environment

FAKES = ("sbatch", "srun", "sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "scancel")
ACCOUNT, CPU_PART, GPU_PART = "acct-test", "cpu-test", "gpu-test"
NODES, GPUS_PER_NODE = 2, 4

# sbatch options that take the next word as their value (the plugin writes the rest as --key=value)
SBATCH_VALUE_OPTS = {"--job-name", "--output", "--comment", "-A", "-p", "-t", "--mem", "--mem-per-cpu", "-D",
                     "-C", "--clusters"}


# ------------------------------------------------------------------------------------------------ the fakes
def state_dir() -> Path:
    """Where the fakes keep their records (FAKE_SLURM_DIR)."""
    return Path(os.environ["FAKE_SLURM_DIR"])


def record(name: str, entry: dict) -> None:
    """Append one JSON line to <state>/<name>.jsonl under a lock (fakes run concurrently)."""
    with open(state_dir() / f"{name}.jsonl", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(entry) + "\n")


def next_job_id() -> str:
    """A fresh job id from a locked counter file."""
    with open(state_dir() / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        job_id = int(f.read() or "1000") + 1
        f.seek(0)
        f.truncate()
        f.write(str(job_id))
    return str(job_id)


def job_file(job_id: str) -> Path:
    """The state file of one job."""
    return state_dir() / "jobs" / f"{job_id}.json"


def write_job(job_id: str, **fields: object) -> None:
    """Update a job's state file atomically."""
    path = job_file(job_id)
    job = json.loads(path.read_text()) if path.exists() else {}
    job.update(fields)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def parse_sbatch(argv: list[str]) -> dict[str, object]:
    """sbatch's options as {option: value} (True for bare flags)."""
    opts: dict[str, object] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in SBATCH_VALUE_OPTS:
            opts[word], i = argv[i + 1], i + 2
            continue
        key, eq, value = word.partition("=")
        opts[key] = value if eq else True
        i += 1
    return opts


def fake_sbatch(argv: list[str]) -> int:
    """Record the submission, print its id, and run the --wrap command in the background as the job."""
    opts = parse_sbatch(argv)
    job_id = next_job_id()
    record("sbatch", {"id": job_id, "argv": argv, "opts": opts})
    nodes = int(opts.get("--nodes", 1))
    (state_dir() / "jobs").mkdir(exist_ok=True)
    write_job(job_id, name=opts["--job-name"], state="RUNNING", nodes=nodes)
    log = str(opts["--output"]).replace("%j", job_id)
    env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_JOB_NODELIST=",".join(["localhost"] * nodes))
    if rule_of({"opts": opts}) == os.environ.get("FAKE_SLURM_FAIL_RULE"):
        write_job(job_id, state="FAILED", exit_code=1)  # the "node" fails this rule's jobs without running them
        print(job_id)
        return 0
    if os.fork():
        print(job_id)
        return 0
    os.setsid()
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        job = subprocess.Popen(["bash", "-c", str(opts["--wrap"])], cwd=str(opts["-D"]), env=env,
                               stdin=subprocess.DEVNULL)
        write_job(job_id, pid=job.pid)
        code = job.wait()
    write_job(job_id, state="COMPLETED" if code == 0 else "FAILED", exit_code=code)
    os._exit(0)


def fake_srun(argv: list[str]) -> int:
    """Record the step, run its command once per task here (SLURM_PROCID/NODEID/LOCALID set), fail if any fails."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    opts = parse_sbatch(argv[:i])
    command = argv[i:]
    record("srun", {"argv": argv, "opts": opts, "command": command, "omp": os.environ.get("OMP_NUM_THREADS"),
                    "job": os.environ.get("SLURM_JOB_ID")})
    if os.environ.get("FAKE_SRUN_RECORD_ONLY"):
        return 0
    nodes = int(opts.get("--nodes", 1))
    ntasks = int(opts.get("--ntasks", opts.get("-n1") and 1 or nodes * int(opts.get("--ntasks-per-node", 1))))
    per_node = max(ntasks // nodes, 1)
    tasks = []
    for rank in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NODEID=str(rank // per_node),
                   SLURM_LOCALID=str(rank % per_node), SLURM_NTASKS=str(ntasks), SLURM_NNODES=str(nodes),
                   SLURM_JOB_NUM_NODES=str(nodes), SLURM_STEP_NUM_TASKS=str(ntasks))
        tasks.append(subprocess.Popen(command, env=env))
    codes = [task.wait() for task in tasks]
    return next((code for code in codes if code), 0)


def fake_sacct(argv: list[str]) -> int:
    """`sacct ... --name <run>`: one `id|STATE` line per job of that run; other queries print nothing."""
    if "--name" in argv:
        name = argv[argv.index("--name") + 1]
        for path in sorted((state_dir() / "jobs").glob("*.json")):
            job = json.loads(path.read_text())
            if job.get("name") == name:
                print(f"{path.stem}|{job['state']}")
    return 0


def fake_scontrol(argv: list[str]) -> int:
    """`show config`, `show hostnames <list>` and `show job <id>`."""
    if argv[:2] == ["show", "config"]:
        print("MinJobAge               = 300 sec\nMaxArraySize            = 1001")
    elif argv[:2] == ["show", "hostnames"]:
        print("\n".join(argv[2].split(",")))
    elif argv[:2] == ["show", "job"]:
        job = json.loads(job_file(argv[2]).read_text())
        nodelist = ",".join(["localhost"] * job["nodes"])
        print(f"JobId={argv[2]} JobName={job['name']}\n   JobState={job['state']} Reason=None\n"
              f"   ReqNodeList=(null) ExcNodeList=(null)\n   NodeList={nodelist}\n"
              f"   NumNodes={job['nodes']} NumCPUs={2 * job['nodes']} NumTasks={job['nodes']}")
    else:
        print(f"fake scontrol: unsupported {argv}", file=sys.stderr)
        return 1
    return 0


def fake_scancel(argv: list[str]) -> int:
    """Record the cancellation and kill the jobs' process groups."""
    record("scancel", {"argv": argv})
    for job_id in (a for a in argv if a.isdigit()):
        job = json.loads(job_file(job_id).read_text())
        if "pid" in job:
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        write_job(job_id, state="CANCELLED")
    return 0


def fake_main() -> None:
    """Entry point of every fake: dispatch on the script's name."""
    name, argv = Path(sys.argv[0]).name, sys.argv[1:]
    record("calls", {"command": name, "argv": argv})
    if name == "sbatch":
        code = fake_sbatch(argv)
    elif name == "srun":
        code = fake_srun(argv)
    elif name in ("sacct", "squeue"):
        code = fake_sacct(argv)
    elif name == "sinfo":
        print(f"PARTITION\n{CPU_PART}*\n{GPU_PART}")
        code = 0
    elif name == "scontrol":
        code = fake_scontrol(argv)
    elif name == "sacctmgr":
        print(ACCOUNT)
        code = 0
    elif name == "scancel":
        code = fake_scancel(argv)
    else:
        raise SystemExit(f"unknown fake {name}")
    sys.exit(code)


def install_fakes(tmp_path: Path) -> dict[str, str]:
    """Write the fake commands into tmp_path/bin; the environment that puts them first on PATH."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name in FAKES:
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          "from test_slurm import fake_main\nfake_main()\n")
        script.chmod(0o755)
    env = environment(FAKE_SLURM_DIR=str(state))
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def read_records(tmp_path: Path, name: str) -> list[dict]:
    """The JSON lines a fake recorded."""
    path = tmp_path / "slurm" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rule_of(submission: dict) -> str:
    """The rule name in the plugin's --comment (rule_<name>[_wildcards_...])."""
    comment = str(submission["opts"]["--comment"])
    return comment.removeprefix("rule_").split("_wildcards_")[0]


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
                          "--out", "results/train/e"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
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
def test_multi_node_training_through_the_slurm_profile(tmp_path: Path) -> None:
    """The train job asks for 2 nodes x 4 GPUs (--nodes, --ntasks-per-node=1, --gres per node) and fans out through
    srun to one torchrun per "node" that meet at a c10d rendezvous; evaluation asks for one GPU; the run completes."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    env = slurm_env(tmp_path)
    run = snakemake(tmp_path, env, "results/eval/ours/metrics.json", "--configfile", str(config), "--jobs", "3")
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    subs = read_records(tmp_path, "sbatch")
    for sub in subs:
        check_common(sub, tmp_path)
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
    assert f"rank 0 of {NODES} on cpu" in (tmp_path / "logs/train/ours.log").read_text()
    assert (tmp_path / "results/eval/ours/metrics.json").exists()


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
