#!/usr/bin/env bash
# Start a one-node SLURM on this machine (for the launcher tests; recipe: docs/cluster.md, "Testing").
#   bash scripts/slurm_up.sh     # as root; idempotent: a running controller and node are left as they are
# Installs Debian's slurm-wlm and munge if missing, writes /etc/slurm/slurm.conf for this host (its cores,
# no GPUs, no accounting database, proctrack/linuxproc), starts munged, slurmctld and slurmd, and waits
# until sinfo shows the node idle. scripts/slurm_down.sh stops them. For quick tests: a requeued job may
# start again after 10 s (cred_expire; default 120 s), and scancel kills after 5 s (KillWait; default 30 s).
set -euo pipefail
say() { echo "slurm_up: $*"; }
if [ "$(id -u)" != 0 ]; then echo "slurm_up: must run as root (it installs packages and starts daemons)" >&2; exit 2; fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  say "SLURM already answers: $(sinfo -h -o '%N %T %c CPUs' | head -1)"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge /etc/slurm /var/spool/slurmctld /var/spool/slurmd \
  /var/log/slurm
if [ ! -f /etc/munge/munge.key ]; then
  say "writing /etc/munge/munge.key"
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  /usr/sbin/munged --force
  sleep 1
fi
munge -n | unmunge >/dev/null
host=$(hostname)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
conf=/etc/slurm/slurm.conf
say "writing $conf (node $host, $cpus CPUs, ${mem} MB, no GPUs)"
cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
if ! { [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
  say "starting slurmctld"; /usr/sbin/slurmctld
fi
if ! { [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then
  say "starting slurmd"; /usr/sbin/slurmd
fi
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated) say "node $host is $state: $(sinfo -h -o '%P %N %c CPUs %m MB')"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm_up: the node did not become idle in 60 s; sinfo: $(sinfo 2>&1 | tail -2)" >&2
tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
