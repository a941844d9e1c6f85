#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying and testing sweeps against a real
# scheduler (tests/test_slurm.py): Debian's slurm-wlm and munge (installed with apt if missing),
# one node with this machine's CPUs and memory in one partition "debug", no accounting.
#
#   sudo scripts/slurm_local.sh        start it (idempotent: a running cluster is left as it is)
#   sudo scripts/slurm_local.sh stop   stop the daemons
#
# Exit status 0 once the node takes jobs; otherwise 1, with the reason on stderr (not root, no
# apt-get, a daemon that did not start).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by pretext scripts/slurm_local.sh"
LOGS=/var/log/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)

die() {
  echo "slurm_local: $1" >&2
  exit 1
}

running() {  # the daemon of pid file $1 is alive
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop() {
  for pid_file in "${PIDS[@]}"; do
    if running "$pid_file"; then
      pid=$(cat "$pid_file")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$pid_file"  # slurmctld (running as SlurmUser) cannot remove its own from /run
    fi
  done
}

if [ "${1:-}" = stop ]; then
  [ "$(id -u)" = 0 ] || die "stopping the daemons needs root"
  stop
  exit 0
fi

node_state() { sinfo --noheader --Node --partition=debug --format=%T 2>/dev/null | head -1; }
takes_jobs() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

if ! command -v slurmd >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null ||
  ! command -v sinfo >/dev/null; then
  [ "$(id -u)" = 0 ] || die "not root: installing SLURM needs root (sudo $0)"
  command -v apt-get >/dev/null || die "no apt-get: install SLURM (slurmctld, slurmd, client) and munge by hand"
  echo "slurm_local: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi

# This machine as slurmd sees it: NodeName=HOST CPUs=... RealMemory=... (UpTime is a second line).
read -r -a node < <(slurmd -C | head -1)
host=${node[0]#NodeName=}
config="$MARK
ClusterName=pretext
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups needed (containers, CI machines)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# No accounting: no slurmdbd, no sacct, as on many clusters
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Cores and memory are what jobs ask for; the scheduler starts a job as soon as it is submitted or resources free up
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
# Quick turnaround for tests: a requeued job starts again cred_expire after it stopped (default 120 s),
# a cancelled one is killed KillWait after SIGTERM (default 30 s); squeue shows an ended one for MinJobAge
AuthInfo=cred_expire=5
KillWait=5
MinJobAge=300
ReturnToService=2
${node[*]} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"

if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$config" ] && takes_jobs; then
  exit 0  # already up
fi
[ "$(id -u)" = 0 ] || die "not root: starting SLURM needs root (sudo $0)"
if [ -f "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script: this machine has a SLURM of its own, use that"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$config" ]; then
  stop  # a running cluster with another configuration
  mkdir -p /etc/slurm
  printf '%s\n' "$config" >"$CONF"
fi

mkdir -p "$LOGS" /run/munge /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown slurm:slurm "$LOGS" /var/lib/slurm/slurmctld
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged || die "munged did not start"
running /run/slurmctld.pid || slurmctld || die "slurmctld did not start: see $LOGS/slurmctld.log"
running /run/slurmd.pid || slurmd || die "slurmd did not start: see $LOGS/slurmd.log"

for _ in $(seq 60); do
  takes_jobs && exit 0
  state=$(node_state || true)
  [[ "$state" =~ ^(down|drain) ]] && scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
  sleep 0.5
done
die "the node takes no jobs after 30 s (sinfo: ${state:-no answer}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
