#!/usr/bin/env bash
# Runs jaxquant on this machine's devices, on N local processes, or under SLURM.
#
#   ./launch.sh CONFIG [flags...]             one process, all visible devices
#   ./launch.sh --nproc=N CONFIG [flags...]   N local processes + a coordinator (jax.distributed);
#                                             each output line starts with its process: [0] ...
#   ./launch.sh --slurm CONFIG [flags...]     srun over the allocation (or: srun ./launch.sh CONFIG);
#                                             with --nproc=N, srun --ntasks=N
#
# Flags after CONFIG go to `python -m jaxquant.main`, e.g.
#   ./launch.sh configs/gru.py:quick --config.train.epochs=3 --workdir=runs/try
# Relative paths (CONFIG, --workdir, --data_dir, --out, --config.data.dir) are the caller's:
# they resolve against the directory launch.sh is called from. A CONFIG that is not there
# is looked up in the repository (configs/gru.py works from anywhere).
set -euo pipefail
usage() { sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

nproc=1 nproc_given=0 slurm=0
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --nproc=*) nproc="${1#--nproc=}" nproc_given=1 ;;
    --slurm) slurm=1 ;;
    -h|--help) usage ;;
    *) echo "launch.sh: unknown option $1 (options go before CONFIG)" >&2; usage ;;
  esac
  shift
done
[[ $# -ge 1 ]] || usage
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: --nproc must be a positive integer" >&2; exit 2; }

caller="$PWD"
abs() { [[ "$1" == /* || -z "$1" ]] && printf '%s' "$1" || printf '%s' "$caller/$1"; }
config="$1"; shift
config_file="${config%%:*}"
if [[ "$config_file" != /* && -e "$caller/$config_file" ]]; then
  config="$caller/$config"
fi
args=()
for a in "$@"; do
  case "$a" in
    --workdir=*|--data_dir=*|--out=*|--config.data.dir=*)
      args+=("${a%%=*}=$(abs "${a#*=}")") ;;
    *) args+=("$a") ;;
  esac
done
cmd=(python -m jaxquant.main --config="$config" ${args[@]+"${args[@]}"})
cd "$(dirname "$0")"  # The repository: configs/ and the default runs/ are there.
# One timestamp for all processes, so they agree on the default workdir.
export JAXQUANT_RUN_STAMP="${JAXQUANT_RUN_STAMP:-$(date +%Y%m%d-%H%M%S)}"

if [[ $slurm == 1 ]]; then
  # Each SLURM task runs one process; jax.distributed reads the allocation itself.
  # --label starts each output line with its task number ("1: ...").
  ntasks=()
  [[ $nproc_given == 1 ]] && ntasks=(--ntasks="$nproc")
  exec srun --label --kill-on-bad-exit=1 ${ntasks[@]+"${ntasks[@]}"} "${cmd[@]}"
fi
if [[ $nproc == 1 ]]; then
  exec "${cmd[@]}"
fi

# Process $1 runs the rest, its stdout and stderr lines each starting with "[$1] " (also
# where a progress bar redraws its line after a carriage return).
prefixed() {
  local sub="s/^/[$1] /; s/\r/\r[$1] /g"; shift
  exec > >(sed -u "$sub") 2> >(sed -u "$sub" >&2)
  exec "$@"
}
port=$(( 20000 + RANDOM % 20000 ))
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < nproc; i++)); do
  JAXQUANT_COORDINATOR="127.0.0.1:$port" JAXQUANT_NUM_PROCESSES="$nproc" \
    JAXQUANT_PROCESS_ID="$i" prefixed "$i" "${cmd[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { status=$?; cleanup; }
done
exit "$status"
