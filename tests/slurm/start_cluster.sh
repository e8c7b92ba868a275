#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying the profile by hand (root only).
#
#     tests/slurm/start_cluster.sh [STATE_DIR]     # default /tmp/mowis-slurm
#     sinfo; sbatch ...; squeue                     # as on any cluster
#     tests/slurm/stop_cluster.sh [STATE_DIR]
#
# Installs munge, slurmctld, slurmd and slurm-client with apt-get when they are missing; writes STATE_DIR/slurm.conf
# (this machine's CPUs and RealMemory from `slurmd -C`; partitions `cpu` (default) and `gpu` on the same node,
# as the README's cluster section names them) and links /etc/slurm/slurm.conf to it; starts munged, slurmctld
# and slurmd with their files in STATE_DIR; waits until the node is idle and writes the daemons' pids to
# STATE_DIR/pids. The link is needed because the SLURM plugin's job step drops SLURM_CONF (every SLURM_*
# variable but a few) before it calls srun, so commands inside a job find the configuration only at the
# default path. There is no accounting storage: `sacct` fails, and the profile reads job states with squeue.
# Exit status 2 (and one line on stderr saying why) where the cluster cannot start: not root, no apt-get, a
# SLURM configuration of someone else's in /etc/slurm.
set -euo pipefail

state=$(realpath -m "${1:-/tmp/mowis-slurm}")
cannot() { echo "start_cluster.sh: cannot start a SLURM cluster here: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || cannot "not root (the daemons and apt-get need root)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || cannot "slurmctld/slurmd/sbatch/munged missing and no apt-get to install them"
  echo "start_cluster.sh: installing munge slurmctld slurmd slurm-client" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      munge slurmctld slurmd slurm-client; } >"${TMPDIR:-/tmp}/mowis-slurm-apt.log" 2>&1 \
    || cannot "apt-get install failed (log: ${TMPDIR:-/tmp}/mowis-slurm-apt.log)"
fi

conf=/etc/slurm/slurm.conf
marker="# Written by tests/slurm/start_cluster.sh"
if [[ -e $conf ]] && ! head -1 "$conf" | grep -qF "$marker"; then
  cannot "$conf exists and is not ours (this machine belongs to a cluster)"
fi
running=$(dirname "$(readlink -m "$conf")")
if [[ -s $running/pids ]] && xargs kill -0 <"$running/pids" 2>/dev/null; then
  cannot "a test cluster from $running is running (pids $(tr '\n' ' ' <"$running/pids")): tests/slurm/stop_cluster.sh $running"
fi

rm -rf "$state"/{munge,ctld,slurmd,pids,slurm.conf,slurmctld.log,slurmd.log,slurmctld.pid,slurmd.pid}
mkdir -p "$state"/{munge,ctld,slurmd}
chmod 755 "$state"
host=$(hostname -s)
node=$(slurmd -C | head -1)  # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..

su -s /bin/sh munge -c "test -x '$state'" || cannot "the munge user cannot enter $state (use a folder under /tmp)"
# munge: its own key, socket, pid, log and seed in $state/munge, owned by the munge user (munged refuses root)
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$state/munge"
chmod 755 "$state/munge"  # munged: the socket folder must be searchable by all, writable by munge only
chmod 400 "$state/munge/munge.key"
su -s /bin/sh munge -c "/usr/sbin/munged --key-file=$state/munge/munge.key --socket=$state/munge/socket \
  --pid-file=$state/munge/munged.pid --log-file=$state/munge/munged.log --seed-file=$state/munge/seed"

cat >"$state/slurm.conf" <<CONF
$marker: a one-node cluster on $host.
ClusterName=mowis-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
# Memory limits without cgroups: the linux gatherer samples each step every second and kills one over --mem.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
# A finished job stays in squeue this long. Snakemake's SLURM plugin, polling squeue, backs off to 180 s
# between checks and counts a job it no longer sees as still running: keep this above 180 s.
MinJobAge=300
KillWait=5
ReturnToService=2
$node State=UNKNOWN
# Two jobs may share a core (the tests' tiny jobs mostly wait on Python imports); each job's record keeps the
# CPUs it asked for.
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
CONF

mkdir -p /etc/slurm
ln -sfn "$state/slurm.conf" "$conf"
slurmctld
slurmd
for _ in $(seq 60); do
  if [[ $(sinfo -h -n "$host" -o %T 2>/dev/null | sort -u) == idle ]]; then
    cat "$state/slurmctld.pid" "$state/slurmd.pid" "$state/munge/munged.pid" >"$state/pids"
    echo "start_cluster.sh: node $host idle ($conf -> $state/slurm.conf)"
    exit 0
  fi
  sleep 1
done
echo "start_cluster.sh: node $host not idle after 60 s: $(sinfo -h -N -o '%N %T %E' 2>&1)" >&2
tail -n 20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
