#!/usr/bin/env bash
# Stops the single-node Slurm cluster of scripts/slurm-up.sh (its daemons; munged is left up).
set -uo pipefail
DIR="${TEMPER_SLURM_DIR:-/tmp/temper-slurm}"
for d in slurmd slurmctld; do
  pidf="$DIR/run/$d.pid"
  [ -f "$pidf" ] || continue
  pid="$(cat "$pidf")"
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
exit 0
