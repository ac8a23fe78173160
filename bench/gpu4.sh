#!/usr/bin/env bash
# The third lease's one call (600 s at most): issue 3 first, then what is left for issue 4.
# (Run 3 then ran the bert-base lines of bench/RESULTS.md by hand in a second, short call.)
#  1. Training, round 2 (bench/gpu_train.py --plan round2): ten teachers (six epochs), then eight
#     students of their ensemble (ten epochs), chosen on validation; every run scored on test.
#  2. If time is left: the CUDA checks, the model-only ceiling and the end-to-end rate with the
#     lean encoder, on the chosen student (the shipped model stays here: the working tree that
#     travels holds 64 MiB, and the base encoder needs 45 of it).
# Needs, beside the repo: .carry/minilm (the base encoder, fp16) and .carry/data (the splits).
#   run: mv weights /tmp/w; device run 'bash bench/gpu4.sh' (carry .carry/minilm .carry/data); mv /tmp/w weights
# Writes to $OUT (8 files at most): log.txt summary.json runs.tgz model.tar.part-* checks.json bench.jsonl
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
END=$((T0 + ${BUDGET_S:-570}))
left() { echo $((END - $(date +%s))); }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader; nproc
python3 -c "import torch, transformers, tokenizers, pyarrow; print(torch.__version__, transformers.__version__, tokenizers.__version__, pyarrow.__version__)"

echo "== training, round 2"
python3 bench/gpu_train.py --plan round2 --data .carry/data --base .carry/minilm --out runs \
  --phase1 "${PHASE1_S:-160}" --deadline "${TRAIN_S:-380}"
cp runs/summary.json "$OUT/"
tar -czf "$OUT/runs.tgz" runs/*.stderr runs/*/training.json runs/*/train_log.jsonl
BEST=$(python3 -c "import json; print(json.load(open('runs/summary.json'))['chosen'])")
tar -C "runs/$BEST" -cf - emolabel.json model.safetensors tokenizer.json training.json train_log.jsonl \
  | split -b 15M - "$OUT/model.tar.part-"
echo "chosen: $BEST; elapsed $(($(date +%s) - T0))s; left $(left)s"

echo "== issue 4, in what time is left"
if [ "$(left)" -gt 60 ]; then
  timeout 55 python3 bench/gpu_checks.py --model "runs/$BEST" --data .carry/data | tee "$OUT/checks.json"
fi
echo "elapsed $(($(date +%s) - T0))s"
PEAK=777.9  # bf16 8192^3 matmul on this card kind, first lease (bench/RESULTS.md)
if [ "$(left)" -gt 40 ]; then
  timeout 35 python3 bench/model_ceiling.py --device cuda --model "runs/$BEST" --rows 300000 --data .carry/data \
    --peak-tflops $PEAK | tee -a "$OUT/bench.jsonl"
fi
echo "elapsed $(($(date +%s) - T0))s"
if [ "$(left)" -gt 60 ]; then
  timeout $(($(left) - 3)) python3 bench/throughput.py --device cuda --input parquet --model "runs/$BEST" \
    --rows 1000000 --baseline-rows 10000 --data .carry/data --json "$OUT/bench.jsonl"
fi
echo "total $(($(date +%s) - T0))s"
