"""Start `model.train` under torchrun with as many processes as GPUs (one CPU process when there are none).

    python -m model.launch --gpus {resources.gpu} --threads {threads} -- <model.train arguments>

The rule's `gpu` resource fixes the process count (NCCL, one GPU each) or, at 0, one gloo process on the
CPU. The rule's threads are shared out: on GPUs each process gets threads / gpus, one for itself and the rest
as loader workers; on the CPU one loader worker feeds a process that computes with the remaining threads.

Inside a SLURM allocation of more than one node (the SLURM profile's multi-node train job) it fans out itself:
`srun --ntasks-per-node=1 torchrun --nnodes=N --nproc-per-node=G --rdzv-backend=c10d --rdzv-endpoint=MASTER:PORT`
with one launcher per node; G is `--gpus`, or at 0 the GPUs this node sees (the profile asks them per node
through gres), 0 = one CPU process per node. PORT: $MOWIS_RDZV_PORT, default 29500 + job id mod 1000 (two
jobs whose first node is the same machine do not meet at the same port).

On the CPU it first estimates the run's cost (model/cost.py) and refuses, saying what to do, a run that only
GPUs can carry (the paper's R-50 at 640–800 px), unless MOWIS_ALLOW_CPU=1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from model.cost import cpu_refusal


def launch_command(gpus: int, threads: int, train_args: list[str],
                   rendezvous: tuple[str, ...] = ("--standalone",)) -> list[str]:
    """The torchrun command line for `gpus` GPUs (0 = CPU) and `threads` CPU threads in all (per node)."""
    if gpus < 0 or threads < 1:
        raise ValueError(f"launch: gpus must be ≥ 0 and threads ≥ 1, got gpus={gpus} threads={threads}")
    nproc = max(gpus, 1)
    per_process = max(threads // nproc, 1)
    if gpus:
        workers, compute_threads, device = per_process - 1, 1, "cuda"
    else:
        workers = 1 if per_process >= 2 else 0
        compute_threads, device = per_process - workers, "cpu"
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={nproc}",
            "-m", "model.train", *train_args, "--device", device, "--workers", str(workers),
            "--threads", str(compute_threads)]


def slurm_allocation(env: dict[str, str]) -> tuple[int, str, str] | None:
    """(nodes, first host, job id) of the SLURM job this runs in, or None outside SLURM or on one node.

    The slurm-jobstep executor keeps only SLURM_JOB_ID in the rule's environment, so the node count and list
    come from `scontrol show job` when SLURM_JOB_NUM_NODES / SLURM_JOB_NODELIST are absent."""
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return None
    nodes, nodelist = env.get("SLURM_JOB_NUM_NODES"), env.get("SLURM_JOB_NODELIST")
    if not nodes or not nodelist:
        info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
        found_nodes, found_list = re.search(r"\bNumNodes=(\d+)", info), re.search(r"\bNodeList=(\S+)", info)
        if not found_nodes or not found_list:
            raise RuntimeError(f"launch: `scontrol show job {job_id}` gave no NumNodes/NodeList:\n{info}")
        nodes, nodelist = found_nodes.group(1), found_list.group(1)
    if int(nodes) <= 1:
        return None
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()
    return int(nodes), hosts[0], job_id


def visible_gpus(env: dict[str, str]) -> int:
    """GPUs this node's processes may use: the entries of CUDA_VISIBLE_DEVICES (SLURM sets it from gres)."""
    devices = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([d for d in devices.split(",") if d.strip() and d.strip() != "-1"]) if devices else 0


def slurm_launch_command(gpus: int, threads: int, train_args: list[str], nodes: int, master: str,
                         job_id: str, port: int) -> list[str]:
    """srun with one torchrun launcher per node, meeting at `master:port` (c10d); `gpus` and `threads` per node."""
    rendezvous = (f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master}:{port}",
                  f"--rdzv-id={job_id}")
    gres = [f"--gres=gpu:{gpus}"] if gpus else []
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={threads}",
            "--kill-on-bad-exit=1", *gres, *launch_command(gpus, threads, train_args, rendezvous)]


def cpu_refusal_of(train_args: list[str], env: dict[str, str]) -> str | None:
    """`model.cost.cpu_refusal` for the model and train sections in model.train's arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model-params", required=True)
    parser.add_argument("--train-params", required=True)
    known, _ = parser.parse_known_args(train_args)
    return cpu_refusal(json.loads(known.model_params), json.loads(known.train_params), env)


def main(argv: list[str] | None = None) -> None:
    """CLI: replace this process with torchrun running model.train."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m model.launch --gpus N --threads T -- <model.train arguments>")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="the rule's gpu resource (0 = CPU)")
    parser.add_argument("--threads", type=int, required=True, help="the rule's threads")
    args = parser.parse_args(argv[:split])
    allocation = slurm_allocation(dict(os.environ))
    if not (args.gpus or allocation and visible_gpus(dict(os.environ))):
        refusal = cpu_refusal_of(argv[split + 1:], dict(os.environ))
        if refusal:
            raise SystemExit(refusal)
    if allocation is None:
        command = launch_command(args.gpus, args.threads, argv[split + 1:])
    else:
        nodes, master, job_id = allocation
        gpus = args.gpus or visible_gpus(dict(os.environ))
        port = int(os.environ.get("MOWIS_RDZV_PORT") or 29500 + int(job_id) % 1000)
        command = slurm_launch_command(gpus, args.threads, argv[split + 1:], nodes, master, job_id, port)
    print(" ".join(command), file=sys.stderr, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=command[-1])
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
