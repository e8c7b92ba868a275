"""Start `model.train` under torchrun with as many processes as GPUs (one CPU process when there are none).

    python -m model.launch --gpus {resources.gpu} --threads {threads} -- <model.train arguments>

The rule's `gpu` resource fixes the process count (NCCL, one GPU each) or, at 0, one gloo process on the
CPU. The rule's threads are shared out: on GPUs each process gets threads / gpus, one for itself and the rest
as loader workers; on the CPU one loader worker feeds a process that computes with the remaining threads.
"""

from __future__ import annotations

import argparse
import os
import sys


def launch_command(gpus: int, threads: int, train_args: list[str]) -> list[str]:
    """The torchrun command line for `gpus` GPUs (0 = CPU) and `threads` CPU threads in all."""
    if gpus < 0 or threads < 1:
        raise ValueError(f"launch: gpus must be ≥ 0 and threads ≥ 1, got gpus={gpus} threads={threads}")
    nproc = max(gpus, 1)
    per_process = max(threads // nproc, 1)
    if gpus:
        workers, compute_threads, device = per_process - 1, 1, "cuda"
    else:
        workers = 1 if per_process >= 2 else 0
        compute_threads, device = per_process - workers, "cpu"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "model.train", *train_args, "--device", device, "--workers", str(workers),
            "--threads", str(compute_threads)]


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
    command = launch_command(args.gpus, args.threads, argv[split + 1:])
    print(" ".join(command), file=sys.stderr, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=command[-1])
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
