#!/usr/bin/env bash
# Every CUDA path of curvmem, once, on an OLMo-2-1B-shaped model (random weights, nothing
# downloaded), in under 10 minutes on one H100/H200:
#   collect     bf16 autocast, 64 x 512 tokens, one layer (gate+up): tok/s against the FLOP floor
#   eigen       float64 torch.linalg.eigh on the GPU (8192² and 2048²)
#   edit        the K-FAC edit of that layer
#   perplexity  evaluation of the edited model in bf16
#   bsn         one BalancedSubnet epoch (scores on every MLP weight, 1B-sized)
# Each step runs through the `curvmem` CLI in its own process (benchmarks/bench_scale.py).
#
#   benchmarks/gpu_check.sh                      # on the GPU machine
#   benchmarks/gpu_check.sh --device cpu --tiny  # the same script, tiny model, on a CPU (seconds)
#   OUT=dir benchmarks/gpu_check.sh              # also keep the figures as dir/gpu_check.json
set -euo pipefail

device=cuda
tiny=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=(--tiny); shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"

if [ "$device" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
fi

# 64 x 512 tokens: enough batches (8 of 8) for a steady rate after the warm-up batch.
timeout 600 python benchmarks/bench_scale.py --device "$device" --bsn \
  --tokens 32768 --batch-size 8 --ppl-tokens 28672 "${tiny[@]}" \
  --work "$out/work" --json "$out/gpu_check.json"
echo "figures: $out/gpu_check.json"
