#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm executor's tests (`make test`
# starts it) and for trying Slurm by hand: Debian's slurmctld + slurmd + slurm-client + munge,
# installed when missing (needs root and Debian's package registry), one node on 127.0.0.1 with
# this machine's CPUs and memory, partition `debug` (the default) and partition `wide`, which also
# names a node that never comes up. No accounting daemon. State, logs and the config live in
# $TEMPER_SLURM_DIR (default /tmp/temper-slurm); nothing under /etc is changed but munge's key,
# which the munge package creates.
#
# Usage: scripts/slurm-up.sh        prints `export SLURM_CONF=…`; eval it to use the cluster
#        scripts/slurm-down.sh      stops the daemons
# Idempotent: a cluster already up (sinfo answers) is left as it is.
set -euo pipefail
DIR="${TEMPER_SLURM_DIR:-/tmp/temper-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

if [ -f "$CONF" ] && sinfo -h >/dev/null 2>&1; then
  echo "export SLURM_CONF=$CONF"
  exit 0
fi

need=()
for b in slurmctld slurmd sbatch munged; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: missing ${need[*]}; install Debian's slurmctld slurmd slurm-client munge (as root)" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$DIR"/{state,spool,log,run}
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2/1024) - 1024}' /proc/meminfo)"
user="$(id -un)"
cat > "$CONF" <<CONF
# Written by temper's scripts/slurm-up.sh: one node, one partition.
ClusterName=temper
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
# Batch jobs start at once instead of every few seconds.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job takes the node's whole memory and jobs run one at a time.
DefMemPerCPU=1024
# Finished jobs stay visible to squeue/scontrol for an hour (no accounting daemon).
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
# A node that never comes up, so that partition \`wide\` spans two hosts: temper refuses to
# submit there with a store on this host's local disk (the check of a store every node sees).
NodeName=temper-ghost NodeAddr=127.0.0.2 CPUs=1 RealMemory=100 State=FUTURE
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=wide Nodes=$host,temper-ghost MaxTime=INFINITE State=UP
CONF

# munge: the key comes with the package; run the daemon if it is not answering.
if ! munge -n </dev/null >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if [ "$(id -u)" = 0 ]; then
    su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
  else
    munged
  fi
fi

slurmctld -f "$CONF" 
slurmd -f "$CONF"
for _ in $(seq 50); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-up: the node did not become idle; see $DIR/log/" >&2
sinfo >&2 || true
exit 1
