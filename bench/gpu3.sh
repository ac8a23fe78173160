#!/usr/bin/env bash
# The next GPU call (not yet run): what issue 4 still needs measured on a card, in one call.
#  1. CUDA correctness of the lean encoder (emolabel/bert.py) against the CPU, every precision.
#  2. The model's own ceiling (pre-tokenized batches): tells the model loop from the CPU side.
#  3. End to end, Parquet -> Parquet, shipped MiniLM (1M rows) and bert-base shape (400k rows),
#     with the pipeline baseline in the same run.
# Needs .carry/data beside the repo (the splits). About 6-8 minutes on an H100.
#   run: bash bench/gpu3.sh   (carry: .carry/data)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
J="$OUT/bench.jsonl"
python3 bench/gpu_checks.py --model weights/emotion-minilm --data .carry/data | tee "$OUT/checks.json"
PEAK=$(python3 -c "import json; print(json.load(open('$OUT/checks.json')).get('bf16_matmul_tflops', 0))" 2>/dev/null || echo 0)
echo "peak bf16 TFLOP/s: $PEAK; elapsed $(( $(date +%s) - T0 ))s"
python3 bench/model_ceiling.py --device cuda --rows 300000 --data .carry/data --peak-tflops "$PEAK" | tee -a "$J"
python3 bench/model_ceiling.py --device cuda --rows 200000 --data .carry/data --shape bert-base --peak-tflops "$PEAK" | tee -a "$J"
echo "elapsed $(( $(date +%s) - T0 ))s"
python3 bench/throughput.py --device cuda --input parquet --rows 1000000 --baseline-rows 20000 --data .carry/data --json "$J"
echo "elapsed $(( $(date +%s) - T0 ))s"
python3 bench/throughput.py --device cuda --input parquet --shape bert-base --rows 400000 --baseline-rows 10000 --data .carry/data --json "$J"
echo "total $(( $(date +%s) - T0 ))s"
