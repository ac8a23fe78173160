"""The model alone: rows/s of Labeler.logits over pre-tokenized, length-sorted batches (no I/O,
no tokenization), and the fraction of the card's bf16 matmul rate that it reaches. Run beside
bench/throughput.py to see how far end-to-end is from the model's own ceiling.

    python bench/model_ceiling.py --device cuda --rows 200000 [--shape bert-base] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--shape", choices=["minilm", "bert-base"])
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the card's measured bf16 rate")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "emotion")
    a = ap.parse_args()
    import pyarrow as pa
    import torch
    from fake_model import random_model
    from throughput import SHAPES, dataset_texts

    from emolabel.config import default_model_dir
    from emolabel.inference import Labeler

    folder = a.model or default_model_dir()
    if a.shape:
        tmp = Path(tempfile.mkdtemp())
        tj = (folder / "tokenizer.json").read_text()
        random_model(tmp / "m", tj, vocab_size=len(json.loads(tj)["model"]["vocab"]), **SHAPES[a.shape])
        folder = tmp / "m"
    lb = Labeler(folder, device=a.device, precision=a.precision, batch_size=a.batch_size, max_tokens=a.max_tokens)
    texts = dataset_texts(a.data)
    texts = (texts * (a.rows // len(texts) + 1))[: a.rows]
    chunk = 65536
    preps = [lb.prepare(pa.array(texts[i : i + chunk])) for i in range(0, len(texts), chunk)]
    lb.logits(preps[0])  # warm-up
    sync = torch.cuda.synchronize if lb.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for p in preps:
        lb.logits(p)
    sync()
    dt = time.perf_counter() - t0
    enc = lb.model.encoder.config if hasattr(lb.model, "encoder") else None
    h, layers = enc.hidden_size, enc.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * enc.intermediate_size  # dense weights of one layer
    flops = 0.0
    for p in preps:
        for ids, _ in p.batches:
            rows, width = ids.shape
            flops += 2 * per_layer * layers * rows * width + 4 * layers * h * rows * width * width
    out = {"device": a.device, "precision": lb.precision, "shape": a.shape or "shipped", "rows": a.rows,
           "batch_size": lb.batch_size, "max_tokens": lb.max_tokens, "model_rows_per_s": round(a.rows / dt),
           "tflops": round(flops / dt / 1e12, 2)}
    if a.peak_tflops:
        out["fraction_of_peak"] = round(flops / dt / 1e12 / a.peak_tflops, 4)
    if lb.device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
