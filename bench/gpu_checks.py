"""CUDA checks of `emolabel tag` and the Labeler: every precision against the CPU, plus the
card's measured bf16 matmul rate (the ceiling for 'fraction of peak').

    python bench/gpu_checks.py --model weights/emotion-minilm --data ../shared/data/emotion
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    a = ap.parse_args()
    import numpy as np
    import torch

    from emolabel.inference import Labeler

    out: dict = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with open(a.data / "test.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    ref = Labeler(a.model, device="cpu", precision="fp32").predict_proba(texts)
    for precision in ("fp32", "bf16", "fp16"):
        for dev in ("cuda", "cuda:0"):
            p = Labeler(a.model, device=dev, precision=precision).predict_proba(texts)
            out[f"{dev}/{precision}"] = {
                "label_agreement_with_cpu": float((p.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_prob_diff": float(np.abs(p - ref).max()),
            }
    # the end-to-end CLI on CUDA, file to file and stdin to stdout
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("examples/posts.csv", f"{tmp}/o.parquet"), ("examples/posts.parquet", f"{tmp}/o.csv")):
            extra = ["--text-column", "body"] if src.endswith("parquet") else []
            r = subprocess.run([sys.executable, "-m", "emolabel", "tag", src, "-o", dst, "--model", str(a.model),
                                "--device", "cuda", *extra], capture_output=True, text=True, cwd=REPO)
            out[f"cli {src} -> {Path(dst).suffix}"] = {"rc": r.returncode, "stderr": r.stderr.strip()[-300:]}
        r = subprocess.run([sys.executable, "-m", "emolabel", "tag", "-", "--model", str(a.model), "--device",
                            "cuda:9"], input=open(REPO / "examples/posts.csv", "rb").read(), capture_output=True,
                           cwd=REPO)
        out["cli --device cuda:9"] = {"rc": r.returncode, "stderr": r.stderr.decode().strip()[-300:]}
    # the card's bf16 matmul rate, measured (random data, CUDA events, median of 20)
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        x @ y
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    times.sort()
    out["bf16_matmul_tflops"] = 2 * n**3 / times[10] / 1e12
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"checks took {time.time() - t:.0f} s", file=sys.stderr)
