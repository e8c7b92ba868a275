"""The real one-node SLURM cluster of the `slurm` tests: started once per session by start_cluster.sh, stopped by
stop_cluster.sh. Where it cannot start (not root, no apt-get, ...) every `slurm` test is skipped with the reason,
or fails with it when MOWIS_REQUIRE_SLURM=1 (CI: .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_slurm import HERE, Cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """Start the cluster (or skip with start_cluster.sh's reason), yield it, stop its daemons by their pids.
    Its state folder is in /tmp, not in pytest's private tmp_path: munged runs as the munge user."""
    state = Path(tempfile.mkdtemp(prefix="mowis-slurm-"))
    start = subprocess.run([HERE / "start_cluster.sh", state], capture_output=True, text=True, timeout=900)
    if start.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
    if start.returncode == 2:
        reason = start.stderr.strip().splitlines()[-1]
        if os.environ.get("MOWIS_REQUIRE_SLURM") == "1":
            pytest.fail(f"MOWIS_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    assert start.returncode == 0, f"start_cluster.sh failed:\n{start.stdout}\n{start.stderr}"
    try:
        node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
        cpus, memory = re.search(r"\bCPUTot=(\d+)", node), re.search(r"\bRealMemory=(\d+)", node)
        yield Cluster(state, int(cpus.group(1)), int(memory.group(1)))
    finally:
        stop = subprocess.run([HERE / "stop_cluster.sh", state], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, f"stop_cluster.sh failed:\n{stop.stdout}\n{stop.stderr}"
        shutil.rmtree(state)
