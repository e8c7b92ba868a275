"""Learning curves of training runs as a markdown table: each loss term averaged over windows of iterations.

`python benchmarks/curves.py --every 100 RUN_DIR [RUN_DIR ...]` reads each RUN_DIR/metrics.jsonl (written by
model.train every log_every iterations) and prints one row per run and window: the window's last
iteration and the mean of each logged term over the window (records of skipped steps only left out).
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from model.train import record_has_values  # noqa: E402

TERMS = ("loss", "loss_cls", "loss_box", "loss_ctr", "loss_proj", "loss_pairwise")


def windows(metrics: Path, every: int) -> dict[int, dict[str, float]]:
    """{window end: {term: mean}} over the logged records of `metrics`, windows of `every` iterations."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if not record_has_values(record):
            continue
        end = -(-record["step"] // every) * every  # ceil to the window's last iteration
        for term in TERMS:
            sums[end][term].append(record[term])
    return {end: {t: sum(v) / len(v) for t, v in terms.items()} for end, terms in sorted(sums.items())}


def main() -> None:
    """CLI: print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    print("| run | iters | " + " | ".join(TERMS) + " |")
    print("|---|---:|" + "---:|" * len(TERMS))
    for run in args.runs:
        for end, means in windows(run / "metrics.jsonl", args.every).items():
            print(f"| {run.name} | {end} | " + " | ".join(f"{means[t]:.3f}" for t in TERMS) + " |")


if __name__ == "__main__":
    main()
