"""The SLURM profile on a real one-node SLURM cluster (tests/slurm/start_cluster.sh; skipped where it cannot
start): the tiny workflow end to end with real sbatch, each job's scheduler record against what the profile
asks, and the faults a cluster shows: a cancelled job, a job over its time or memory limit, Ctrl-C.

The README's cluster section is run as written (its exports and its `snakemake --profile` line), with the
exports of its "one-node SLURM" block for a node without GPUs. The cluster keeps no accounting, so the profile
finds that `sacct` fails and reads job states with squeue.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from local_slurm import HERE, Cluster  # first: puts smk on the path
import smk
from smk import REPO, TINY

pytestmark = pytest.mark.slurm

FAULTS = HERE / "faults.smk"
PROFILE = REPO / "workflow/profiles/slurm"
# Snakemake's status checks start after 1 s instead of 40 s (the plugin then backs off by itself)
FAST = ("--slurm-init-seconds-before-status-checks", "1")


def readme_cluster_section() -> tuple[dict[str, str], list[str]]:
    """The variables the README's cluster section exports and its first `snakemake --profile` command line."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## GPU workstation and cluster\n")[1].split("\n## ")[0]
    env: dict[str, str] = {}
    for line in re.findall(r"^export (.+)$", section, flags=re.M):
        words = shlex.split(line, comments=True)
        env.update(word.split("=", 1) for word in words)
    command = next(line for line in section.splitlines() if line.startswith("snakemake --profile"))
    words = shlex.split(command, comments=True)
    return env, [str(PROFILE) if word == "workflow/profiles/slurm" else word for word in words]


def profile_env(**extra: str) -> dict[str, str]:
    """This interpreter first on PATH and the README's cluster variables."""
    return smk.environment(**readme_cluster_section()[0], **extra)


def scontrol_jobs() -> dict[str, dict[str, str]]:
    """Every job record slurmctld holds (`scontrol show job -o`): {job id: {field: value}}."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]
    return {r["JobId"]: r for r in records}


@contextmanager
def job_records() -> Iterator[dict[str, dict[str, str]]]:
    """Poll `scontrol show job -o` every 0.5 s in a thread while the block runs: the newest record of every job
    submitted meanwhile (slurmctld keeps a finished job for MinJobAge = 300 s, so none is missed). Read it
    through list(...values()) while the block runs: the thread updates it."""
    seen: dict[str, dict[str, str]] = {}
    before = set(scontrol_jobs())
    stop = threading.Event()

    def poll() -> None:
        """Add the new jobs' records to `seen` until stopped, and once more after."""
        while True:
            seen.update({job_id: record for job_id, record in scontrol_jobs().items() if job_id not in before})
            if stop.is_set():
                return
            stop.wait(0.5)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def megabytes(memory: str) -> int:
    """A SLURM memory size (e.g. 8000M, 16G) in MB."""
    return int(memory[:-1]) * {"M": 1, "G": 1024, "T": 1024 ** 2}[memory[-1]]


def rule_of(record: dict[str, str]) -> str:
    """The rule of a job from the plugin's comment (rule_<name>[_wildcards_...])."""
    return record["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def minutes(time_limit: str) -> int:
    """A SLURM time limit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = time_limit.rpartition("-")
    hours, mins, secs = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins + secs // 60


def expected_requests(env: dict[str, str]) -> dict[str, tuple[str, int, int, int]]:
    """Per rule (partition, CPUs, runtime in minutes, memory in MB) at attempt 1: the profile's values as
    docs/cluster.md's table lists them, capped by MOWIS_SLURM_MAX_CPUS / _MAX_MEM_MB."""
    cpu, gpu = env["MOWIS_SLURM_CPU_PARTITION"], env["MOWIS_SLURM_GPU_PARTITION"]
    max_cpus, max_mem = int(env["MOWIS_SLURM_MAX_CPUS"]), int(env["MOWIS_SLURM_MAX_MEM_MB"])
    asked = {"synthetic": (cpu, 1, 30, 4000), "manifest": (cpu, 1, 30, 8000), "split": (cpu, 1, 30, 8000),
             "flow": (cpu, 8, 240, 32000),
             "flow_quality": (cpu, 8, 60, 16000), "affinity": (cpu, 4, 120, 16000),
             "frame_index": (cpu, 2, 60, 16000), "train": (gpu, 32, 1440, 200000), "evaluate": (gpu, 8, 120, 32000),
             "object_motion": (cpu, 1, 120, 16000), "subset_ap": (cpu, 1, 120, 16000), "tables": (cpu, 1, 30, 4000)}
    return {rule: (part, min(cpus, max_cpus), runtime, min(mem, max_mem))
            for rule, (part, cpus, runtime, mem) in asked.items()}


def profile_run(workdir: Path, argv: list[str], env: dict[str, str],
                timeout: int = 1200) -> subprocess.CompletedProcess:
    """`snakemake <argv>` (argv[0] == "snakemake") on the repository's Snakefile, run in `workdir`."""
    assert argv[0] == "snakemake"
    return smk.snakemake(workdir, *argv[1:], *FAST, env=env, timeout=timeout)


def test_tiny_workflow_through_the_profile(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """The README's command on the tiny config: every rule is a SLURM job whose record has the partition, CPUs,
    memory, time limit and account the profile asks for; the tables come out; a second run submits nothing."""
    env = profile_env()
    _, command = readme_cluster_section()
    (tmp_path / "my.yaml").write_text(TINY)
    argv = [command[0], "results/tables", "results/flow/quality.json", *command[1:]]  # targets before --configfile
    with job_records() as records:
        run = profile_run(tmp_path, argv, env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "localrule" not in run.stderr  # nothing ran on the login node
    jobs = list(records.values())
    per_rule = Counter(rule_of(job) for job in jobs)
    # TINY: 8 videos in flow shards of 4; two frame indices (train_train, train_val); two experiments; the
    # synthetic data's flow quality; the objects' motion once, subset AP per experiment
    assert per_rule == {"synthetic": 1, "manifest": 1, "split": 1, "flow": 2, "flow_quality": 1, "affinity": 2,
                        "frame_index": 2,
                        "train": 2, "evaluate": 2, "object_motion": 1, "subset_ap": 2, "tables": 1}, per_rule
    expected = expected_requests(env)
    for job in jobs:
        partition, cpus, runtime, mem = expected[rule_of(job)]
        got = (job["Partition"], int(job["NumCPUs"]), minutes(job["TimeLimit"]), megabytes(job["MinMemoryNode"]))
        assert got == (partition, cpus, runtime, mem), job
        assert job["Account"] == env["MOWIS_SLURM_ACCOUNT"] and job["JobState"] == "COMPLETED", job
        assert job["WorkDir"] == str(tmp_path), job
    tables = {p.name for p in (tmp_path / "results/tables").iterdir()}
    assert {f"table{i}.{ext}" for i in range(1, 5) for ext in ("md", "csv")} <= tables, tables

    with job_records() as again:
        rerun = profile_run(tmp_path, argv, env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" in rerun.stdout + rerun.stderr and not again


def test_profile_requires_the_partitions(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """Without the site variables the profile names the one to set."""
    env = {k: v for k, v in smk.environment().items() if not k.startswith("MOWIS_")}
    run = smk.snakemake(tmp_path, "-n", "--profile", str(REPO / "workflow/profiles/slurm"), env=env, timeout=120)
    assert run.returncode != 0
    assert "MOWIS_SLURM_CPU_PARTITION is not set" in run.stdout + run.stderr


def faults_command(*args: str) -> list[str]:
    """snakemake <args> on tests/slurm/faults.smk through the SLURM profile, without retries."""
    return [sys.executable, "-m", "snakemake", "-s", str(FAULTS), "--profile", str(PROFILE), "--retries", "0", *FAST,
            *args]


def wait_for(condition: Callable[[], object], timeout: float, what: str, records: dict) -> None:
    """Poll `condition()` every 0.5 s until it is true; fail naming `what` and the jobs seen after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; jobs: " + "; ".join(
            f"{rule_of(job)} {job['JobState']} {job['Reason']}" for job in list(records.values()))
        time.sleep(0.5)


@contextmanager
def started(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`argv` started in the background, output captured; killed (SIGINT, then SIGKILL) if still running at the end."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def error_of(log: str, rule: str) -> tuple[str, str]:
    """(SLURM job id, SLURM state) in Snakemake's "Error in rule <rule>" report."""
    found = re.search(rf"Error in rule {rule}:\n\s+message: SLURM-job '(\d+)' failed, SLURM status is: '(\w+)'", log)
    assert found, f"no error report for rule {rule}:\n{log[-4000:]}"
    return found.group(1), found.group(2)


def test_cancelled_overtime_and_greedy_jobs_fail_by_name(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """scancel of a running job, a job past its 1-minute limit (--set-resources) and one over its memory each
    fail with a report naming the rule and the SLURM job id; a rerun redoes only the cancelled job."""
    env = profile_env()
    argv = faults_command("--set-resources", "overtime:runtime=1", "greedy:mem_mb=400", "--config", "hold=600",
                          "--", "quick.txt", "wait/a.txt", "overtime.txt", "greedy.txt")
    with job_records() as records, started(argv, tmp_path, env) as run:
        waiting = lambda: [j for j in list(records.values()) if rule_of(j) == "wait" and j["JobState"] == "RUNNING"]
        wait_for(waiting, 120, "the wait job to run", records)
        subprocess.run(["scancel", waiting()[0]["JobId"]], check=True)
        _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0
    state = {rule_of(j): j for j in records.values()}
    assert state["quick"]["JobState"] == "COMPLETED" and (tmp_path / "quick.txt").exists()
    for rule, slurm_state in (("wait", "CANCELLED"), ("overtime", "TIMEOUT"), ("greedy", "FAILED")):
        assert error_of(stderr, rule) == (state[rule]["JobId"], slurm_state), state[rule]
        assert state[rule]["JobState"] == slurm_state, state[rule]
    assert minutes(state["overtime"]["TimeLimit"]) == 1 and megabytes(state["greedy"]["MinMemoryNode"]) == 400
    greedy_log = tmp_path / f".snakemake/slurm_logs/rule_greedy/{state['greedy']['JobId']}.log"
    assert "exceeded memory limit" in greedy_log.read_text()
    assert not (tmp_path / "wait/a.txt").exists()

    with job_records() as rerun_records:
        rerun = subprocess.run(faults_command("--", "quick.txt", "wait/a.txt"), cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [rule_of(j) for j in rerun_records.values()] == ["wait"]
    assert (tmp_path / "wait/a.txt").read_text() == "done\n"


def submitted(workdir: Path) -> int:
    """Jobs that Snakemake has logged as submitted in its run log in `workdir` (.snakemake/log/)."""
    logs = list((workdir / ".snakemake/log").glob("*.snakemake.log"))
    return sum(log.read_text().count("has been submitted with SLURM jobid") for log in logs)


def queued(job_ids: list[str]) -> str:
    """squeue's lines for these jobs (pending, running or completing)."""
    return subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                          text=True).stdout.strip()


def test_ctrl_c_cancels_queued_and_running_jobs(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """SIGINT to Snakemake while one job runs and two wait for memory: it cancels all three, squeue is empty."""
    env = profile_env()
    mem = slurm_cluster.memory_mb * 6 // 10  # one at a time
    argv = faults_command("--config", "hold=600", f"wait_mem_mb={mem}", "--", "wait/a.txt", "wait/b.txt", "wait/c.txt")
    with job_records() as records, started(argv, tmp_path, env) as run:
        states = lambda: sorted(j["JobState"] for j in list(records.values()))
        wait_for(lambda: states() == ["PENDING", "PENDING", "RUNNING"] and submitted(tmp_path) == 3, 120,
                 "one running and two pending jobs, all three known to Snakemake", records)
        run.send_signal(signal.SIGINT)
        # Snakemake cancels and exits once its status-check thread wakes: the plugin's interval grows by 10 s per
        # check while no job ends, up to 180 s, so the cancellation may wait that long (120 s failed: CI, session 5)
        wait_for(lambda: not queued(list(records)), 240, "an empty squeue after Ctrl-C", records)
        run.communicate(timeout=300)
    assert states() == ["CANCELLED"] * 3
