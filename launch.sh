#!/usr/bin/env bash
# Runs jaxquant on this machine's devices: ./launch.sh CONFIG [flags...]
#   ./launch.sh configs/gru.py:quick --config.train.epochs=3 --workdir=runs/try
set -euo pipefail
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  echo "usage: $0 CONFIG [flags passed to python -m jaxquant.main]" >&2
  exit 2
fi
config="$1"; shift
cd "$(dirname "$0")"
exec python -m jaxquant.main --config="$config" "$@"
