#!/usr/bin/env bash
# Data-parallel scaling on this machine: the ShapesWorld stage-1 model (connector and LLM
# trainable, so every step all-reduces their gradients) for STEPS steps with PER_RANK samples per
# rank, on 1 rank and then on 2 ranks (scripts/launch, Gloo over 127.0.0.1), one intra-op thread per
# rank. Prints the training loop's tokens/s of each and the scaling efficiency,
# (2-rank tokens/s) / (2 x 1-rank tokens/s).
# Usage: bench/dist_bench.sh [build/mllm] (STEPS, PER_RANK from the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
mllm="${1:-build/mllm}"
steps="${STEPS:-30}"
per_rank="${PER_RANK:-16}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$mllm" data shapes --out "$work/shapes" --seed 0 --train 2000 --val 16 > /dev/null 2>&1
d="$work/shapes"
common=(train --config configs/shapes/stage1_pretrain.yaml --set run.threads=1
  --set model.llm.pretrained= --set model.tokenizer="$d/tokenizer.json"
  --set data.train.path="$d/captions_train.json" --set data.train.image_root="$d/images"
  --set data.eval.path= --set 'train.trainable=["multi_modal_projector.*","language_model.*"]'
  --set train.max_steps="$steps" --set train.save_every=0 --set train.batch_size="$per_rank"
  --set train.log_every=1000)

tokens_per_s() {  # the training loop's global tokens/s, from a run's summary.json
  python3 -c 'import json, sys; print("%.0f" % json.load(open(sys.argv[1]))["tokens_per_s"])' "$1/summary.json"
}

"$mllm" "${common[@]}" --set run.output_dir="$work/one" > "$work/one.log" 2>&1
one=$(tokens_per_s "$work/one")
scripts/launch --nproc-per-node 2 --master-port "${MASTER_PORT:-29533}" -- \
  "$mllm" "${common[@]}" --set run.output_dir="$work/two" > "$work/two.log" 2>&1
two=$(tokens_per_s "$work/two")
# For comparison: the same rank using both cores for intra-op threads instead.
"$mllm" "${common[@]}" --set run.threads=2 --set run.output_dir="$work/threads" > "$work/threads.log" 2>&1
threads=$(tokens_per_s "$work/threads")
grep -h "summed across ranks" "$work/two.log" | sed 's/^.*info //' | head -1
echo "1 rank : $one tokens/s ($per_rank per step, $steps steps, 1 thread)"
echo "2 ranks: $two tokens/s ($((2 * per_rank)) per step, Gloo on 127.0.0.1, 1 thread each)"
echo "1 rank : $threads tokens/s ($per_rank per step, 2 intra-op threads)"
python3 -c "print('scaling efficiency 1->2 ranks: %.0f%%' % (100 * $two / (2 * $one)))"
