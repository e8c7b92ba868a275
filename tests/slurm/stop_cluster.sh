#!/usr/bin/env bash
# Cancel the jobs left on the cluster that tests/slurm/start_cluster.sh started (all of them are a test's),
# stop its daemons by the pids it wrote to STATE_DIR/pids and remove its link /etc/slurm/slurm.conf.
#
#     tests/slurm/stop_cluster.sh [STATE_DIR]     # default /tmp/mowis-slurm
set -euo pipefail

state=$(realpath -m "${1:-/tmp/mowis-slurm}")
conf=/etc/slurm/slurm.conf
[[ -s $state/pids ]] || { echo "stop_cluster.sh: no $state/pids: nothing started there" >&2; exit 0; }
mapfile -t pids <"$state/pids"
if [[ $(readlink "$conf") == "$state/slurm.conf" ]]; then
  squeue -h -o %i | xargs -r scancel
  for _ in $(seq 30); do [[ -z $(squeue -h -o %i) ]] && break; sleep 0.5; done
fi
kill "${pids[@]}" 2>/dev/null || true
for _ in $(seq 30); do
  if ! kill -0 "${pids[@]}" 2>/dev/null; then
    rm "$state/pids"
    [[ $(readlink "$conf") != "$state/slurm.conf" ]] || rm "$conf"
    echo "stop_cluster.sh: stopped ${pids[*]}"
    exit 0
  fi
  sleep 0.5
done
echo "stop_cluster.sh: still running after 15 s: $(ps -o pid=,comm= -p "${pids[*]}" | tr '\n' ' ')" >&2
exit 1
