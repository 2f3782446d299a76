#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one run, for a lent GPU machine
# whose image has CUDA builds of jax and torch but not all of our dependencies.
#
#   bash benchmarks/gpu.sh --wheels   # here, once: wheels of what that image lacks, into .whl/
#   bash benchmarks/gpu.sh            # there (the device tool, carry=[".whl"]): results in $OUT
#
# It ends within ~580 s (its three limits, 320 + 150 + 100 s, and the install), under one
# device call's 600: run it as one call with timeout_s=600.
#
# Runs, in bfloat16 with float32 parameters: benchmarks/train_step.py on the GPU
# (quick and full shapes, the configs' own batches, torch eager; torch.compile is
# left out to fit the lease) and benchmarks/epoch_time.py (the original's ResNet-18
# epoch) and benchmarks/population.py's step table at K = 16 and 256 (the issue's GPU goals:
# >= 10x and >= 100x of sequential steps). Each has its own time limit, so a stuck step still returns the other's
# results; $OUT gets performance.md (the doc with the new GPU sections) and the logs.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU image (Python 3.12) lacks: pyproject.toml's dependencies and theirs.
WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 zstandard==0.25.0
        ml-collections==1.1.0 tensorboardX==2.6.5)

if [[ "${1:-}" == "--wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  du -sh .whl
  exit 0
fi

OUT=${OUT:-/tmp/jaxquant-gpu}
mkdir -p "$OUT"
if ! ls .whl/*.whl > /dev/null 2>&1; then
  echo "no wheels in .whl/: run 'bash benchmarks/gpu.sh --wheels' first and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  | tee "$OUT/gpu.txt"
python3 -c "import jax, torch, flax, optax; print('jax', jax.__version__, jax.devices(), \
'| torch', torch.__version__, torch.cuda.get_device_name(), '| flax', flax.__version__, \
'| optax', optax.__version__)" 2>&1 | tee -a "$OUT/gpu.txt" || exit 1

cp docs/performance.md "$OUT/performance.md"
status=0
timeout 320 python3 benchmarks/train_step.py --device=gpu --dtype=bfloat16 \
  --torch_compile=none --repeats=5 --target_s=0.5 --out="$OUT/performance.md" \
  2>&1 | tee "$OUT/train_step.log" || status=1
timeout 150 python3 benchmarks/epoch_time.py --dtype=bfloat16 --out="$OUT/performance.md" \
  2>&1 | tee "$OUT/epoch_time.log" || status=1
timeout 100 python3 benchmarks/population.py --quick --no-sweep --ks=16,256 \
  --out="$OUT/performance.md" 2>&1 | tee "$OUT/population.log" || status=1
exit $status
