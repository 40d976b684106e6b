#!/usr/bin/env bash
# Data-parallel scaling on this machine: the ShapesWorld stage-1 model (connector and LLM
# trainable, so every step all-reduces their gradients) for STEPS steps with PER_RANK samples per
# rank, on 1 rank and then on 2 ranks (scripts/launch, Gloo over 127.0.0.1), one intra-op thread per
# rank. Prints the training loop's tokens/s of each and the scaling efficiency,
# (2-rank tokens/s) / (2 x 1-rank tokens/s). Then each train.sharding level on 2 ranks with a wider
# LLM (hidden 512, 8 layers: 26M trainable parameters, so that the state, not the runtime,
# dominates memory): tokens/s, each rank's peak resident memory (/usr/bin/time) and the
# optimizer-state bytes each rank holds.
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
  --set model.llm.pretrained= --set model.vision.pretrained= --set train.init_from=
  --set model.tokenizer="$d/tokenizer.json"
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

echo "-- train.sharding on 2 ranks (LLM hidden 512 x 8 layers, 10 steps; peak RSS and optimizer state per rank)"
wide=(--set model.llm.hidden=512 --set model.llm.layers=8 --set model.llm.heads=8
  --set model.llm.kv_heads=8 --set model.llm.intermediate=1408 --set train.max_steps=10)
for level in none optimizer gradients parameters; do
  scripts/launch --nproc-per-node 2 --master-port "${MASTER_PORT:-29533}" -- \
    sh -c '/usr/bin/time -f %M -o "$0.$RANK.kb" "$@"' "$work/$level" \
    "$mllm" "${common[@]}" "${wide[@]}" --set train.sharding="$level" --set run.output_dir="$work/$level" \
    > "$work/$level.log" 2>&1
  state=$(sed -n 's/.*optimizer state per rank \[\([^]]*\)\].*/\1/p' "$work/$level.log" | head -1)
  printf '%-11s %7s tokens/s | peak RSS rank 0 %6.0f MiB, rank 1 %6.0f MiB | optimizer state per rank: %s\n' \
    "$level" "$(tokens_per_s "$work/$level")" "$(($(cat "$work/$level.0.kb") / 1024))" \
    "$(($(cat "$work/$level.1.kb") / 1024))" "${state:-all of it (unsharded)}"
done
