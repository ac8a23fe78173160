#!/usr/bin/env bash
# Everything that needs a GPU, in one call of the device machine (15 minutes a session):
# train the default model (grid + distillation), check every CUDA path, time throughput.
# Needs, beside the repo: .carry/minilm (the base encoder, fp16) and .carry/data (the splits).
# Writes to $OUT: log.txt, summary.json, checks.json, bench.jsonl, runs.tgz, model.tgz.part-*
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, transformers, tokenizers, pyarrow; print(torch.__version__, transformers.__version__, tokenizers.__version__, pyarrow.__version__)"

echo "== training (deadline ${TRAIN_S:-300}s)"
python3 bench/gpu_train.py --data .carry/data --base .carry/minilm --out runs --deadline "${TRAIN_S:-300}"
cp runs/summary.json "$OUT/" 2>/dev/null
tar -czf "$OUT/runs.tgz" runs/*.stderr runs/*/training.json runs/*/train_log.jsonl 2>/dev/null
BEST=$(python3 -c "import json; print(json.load(open('runs/summary.json'))['chosen'])")
echo "chosen: $BEST"; echo "elapsed $(( $(date +%s) - T0 ))s"
tar -C "runs/$BEST" -cf - emolabel.json model.safetensors tokenizer.json training.json train_log.jsonl \
  | split -b 15M - "$OUT/model.tar.part-"
ls -la "$OUT"

echo "== CUDA checks"
python3 bench/gpu_checks.py --model "runs/$BEST" --data .carry/data | tee "$OUT/checks.json"
echo "elapsed $(( $(date +%s) - T0 ))s"

echo "== throughput"
python3 bench/throughput.py --device cuda --input parquet --model "runs/$BEST" --rows 1000000 \
  --baseline-rows 20000 --data .carry/data --json "$OUT/bench.jsonl"
echo "elapsed $(( $(date +%s) - T0 ))s"
python3 bench/throughput.py --device cuda --input parquet --model "runs/$BEST" --shape bert-base --rows 400000 \
  --baseline-rows 10000 --data .carry/data --json "$OUT/bench.jsonl"
echo "elapsed $(( $(date +%s) - T0 ))s"
python3 bench/throughput.py --device cuda --input parquet --model "runs/$BEST" --rows 1000000 --skip-baseline \
  --data .carry/data --extra "--batch-size 4096 --max-tokens 262144 --chunk-rows 262144" --json "$OUT/bench.jsonl"
echo "total $(( $(date +%s) - T0 ))s"
