#!/usr/bin/env bash
# Stop what scripts/slurm_up.sh started: slurmd, slurmctld (by the ids in their pid files) and munged.
set -uo pipefail
for daemon in slurmd slurmctld; do
  pidfile=/run/$daemon.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "slurm_down: stopping $daemon (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")"
    for _ in $(seq 20); do kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || break; sleep 0.5; done
  fi
done
pidfile=/run/munge/munged.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "slurm_down: stopping munged (pid $(cat "$pidfile"))"
  kill "$(cat "$pidfile")"
fi
exit 0
