#!/usr/bin/env bash
# Runs jaxquant on this machine's devices, on N local processes, or under SLURM.
#
#   ./launch.sh CONFIG [flags...]             one process, all visible devices
#   ./launch.sh --nproc=N CONFIG [flags...]   N local processes + a coordinator (jax.distributed)
#   ./launch.sh --slurm CONFIG [flags...]     srun over the allocation (or: srun ./launch.sh CONFIG)
#
# Flags after CONFIG go to `python -m jaxquant.main`, e.g.
#   ./launch.sh configs/gru.py:quick --config.train.epochs=3 --workdir=runs/try
set -euo pipefail
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

nproc=1 slurm=0
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --nproc=*) nproc="${1#--nproc=}" ;;
    --slurm) slurm=1 ;;
    -h|--help) usage ;;
    *) echo "launch.sh: unknown option $1 (options go before CONFIG)" >&2; usage ;;
  esac
  shift
done
[[ $# -ge 1 ]] || usage
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: --nproc must be a positive integer" >&2; exit 2; }
config="$1"; shift
cmd=(python -m jaxquant.main --config="$config" "$@")
cd "$(dirname "$0")"

if [[ $slurm == 1 ]]; then
  # Each SLURM task runs one process; jax.distributed reads the allocation itself.
  exec srun "${cmd[@]}"
fi
if [[ $nproc == 1 ]]; then
  exec "${cmd[@]}"
fi

port=$(( 20000 + RANDOM % 20000 ))
# One timestamp for all processes, so they agree on the default workdir.
export JAXQUANT_RUN_STAMP="${JAXQUANT_RUN_STAMP:-$(date +%Y%m%d-%H%M%S)}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < nproc; i++)); do
  JAXQUANT_COORDINATOR="127.0.0.1:$port" JAXQUANT_NUM_PROCESSES="$nproc" \
    JAXQUANT_PROCESS_ID="$i" "${cmd[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { status=$?; cleanup; }
done
exit "$status"
