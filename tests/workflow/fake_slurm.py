"""Fake SLURM commands for tests/workflow/test_slurm.py (its docstring describes them): each fake is a small
script that calls `fake_main()`. Standard library only: every sbatch, srun and status poll starts a fresh
interpreter, and importing torch there (as test_slurm does, through model.launch) cost seconds of CPU per call."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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


def rule_of(submission: dict) -> str:
    """The rule name in the plugin's --comment (rule_<name>[_wildcards_...])."""
    comment = str(submission["opts"]["--comment"])
    return comment.removeprefix("rule_").split("_wildcards_")[0]
