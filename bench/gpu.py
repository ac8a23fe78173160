"""The one GPU check, for a lease of a few minutes: every GPU figure of bench/RESULTS.md in one call.

    python bench/gpu.py --out "$OUT" [--quick]         # on the GPU machine, from the repo root

Steps, each with its own time limit so that one slow step cannot eat the others (about 7
minutes in all on an H100/H200; --quick: about 3):
  1. card: name, memory, GPU count, versions;
  2. correctness (bench/gpu_checks.py): bf16, fp16 and fp32 on CUDA against fp32 on the CPU,
     on the test split: label agreement and the largest probability difference;
  3. same text, same label: 100,000 rows tagged, then the same rows shuffled with another
     --batch-size; how many labels and how much probability differ, in bf16 and in fp32;
  4. model alone (bench/model_ceiling.py) for MiniLM and the bert-base shape, with the card's
     fraction of its measured bf16 peak;
  5. end to end, Parquet -> Parquet, start-up included, 1M rows MiniLM and 400k rows of the
     bert-base shape, the transformers pipeline measured in the same run (bench/throughput.py).
Writes $OUT/gpu.json (the RESULTS table is made from it: commit it as
bench/results/gpu-YYYY-MM-DD.json) and $OUT/log.txt. Needs the emotion splits at --data (carry
them: the machine reaches nothing) and the shipped model in weights/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], limit: float, log) -> tuple[int, str]:
    """A step in a subprocess with a time limit; returns its stdout, and logs stdout and stderr."""
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"))
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        code, out, err = 124, text(e.stdout), text(e.stderr)
    log.write(f"$ {' '.join(cmd)}  [{code}, {time.time() - t:.0f} s]\n{out}\n{err}\n")
    log.flush()
    return code, out


def last_json(text: str) -> dict:
    """The last line of a step's output that is a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def shuffle_check(model: str, data: Path, rows: int, precision: str, tmp: Path, device: str = "cuda") -> dict:
    """Tag `rows` dataset texts, then the same rows shuffled at another batch size: label changes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    texts = pa_csv.read_csv(data / "train.csv").column("text").to_pylist()
    col = [texts[i % len(texts)] for i in range(rows)]
    perm = np.random.default_rng(0).permutation(rows)
    pq.write_table(pa.table({"i": range(rows), "text": col}), tmp / "a.parquet")
    pq.write_table(pa.table({"i": perm, "text": [col[j] for j in perm]}), tmp / "b.parquet")
    outs = []
    for name, extra in (("a", []), ("b", ["--batch-size", "333"])):
        subprocess.run([sys.executable, "-m", "emolabel", "tag", str(tmp / f"{name}.parquet"), "-o",
                        str(tmp / f"{name}.out.parquet"), "--overwrite", "--model", model, "--device", device,
                        "--precision", precision, "-q", *extra], check=True, cwd=REPO)
        t = pq.read_table(tmp / f"{name}.out.parquet").sort_by("i")
        outs.append(t)
    a, b = outs
    probs = [c for c in a.column_names if c.startswith("emotion_") and c != "emotion_score"]
    pa_ = np.stack([a.column(c).to_numpy(zero_copy_only=False) for c in probs], 1)
    pb_ = np.stack([b.column(c).to_numpy(zero_copy_only=False) for c in probs], 1)
    labels_differ = int(sum(x != y for x, y in zip(a.column("emotion").to_pylist(), b.column("emotion").to_pylist())))
    return {"precision": precision, "rows": rows, "labels_differ": labels_differ,
            "max_prob_diff": float(np.nanmax(np.abs(pa_ - pb_)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "emotion")
    ap.add_argument("--model", default=str(REPO / "weights" / "emotion-minilm"))
    ap.add_argument("--quick", action="store_true", help="smaller row counts (about 3 minutes)")
    ap.add_argument("--peak-tflops", type=float, default=777.9, help="the card's measured bf16 matmul rate")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = a.out / "tmp"
    tmp.mkdir(exist_ok=True)
    import torch

    result: dict = {"date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name(0),
                    "gpus": torch.cuda.device_count(), "torch": torch.__version__}
    minilm_rows, bert_rows, shuffle_rows = (200_000, 100_000, 20_000) if a.quick else (1_000_000, 400_000, 100_000)
    py = sys.executable
    with open(a.out / "log.txt", "a") as log:
        _, out = run([py, "bench/gpu_checks.py", "--model", a.model, "--data", str(a.data)], 90, log)
        try:
            result["correctness"] = json.loads(out)
        except ValueError:
            result["correctness"] = {"failed": out[-2000:]}
        result["shuffle"] = [shuffle_check(a.model, a.data, shuffle_rows, p, tmp) for p in ("bf16", "fp32")]
        for shape in ("minilm", "bert-base"):
            _, out = run([py, "bench/model_ceiling.py", "--device", "cuda", "--shape", shape, "--rows", "200000",
                          "--data", str(a.data), "--peak-tflops", str(a.peak_tflops)], 60, log)
            result[f"ceiling_{shape.replace('-', '_')}"] = last_json(out)
        for shape, rows, key in (("minilm", minilm_rows, "minilm"), ("bert-base", bert_rows, "bert_base")):
            _, out = run([py, "bench/throughput.py", "--device", "cuda", "--input", "parquet", "--shape", shape,
                          "--rows", str(rows), "--baseline-rows", "10000" if shape == "minilm" else "5000",
                          "--data", str(a.data)], 200, log)
            r = last_json(out)
            result[f"{key}_end_to_end"] = r
            result[f"{key}_rows_per_s"] = r.get("emolabel_rows_per_s")
            result[f"{key}_pipeline_rows_per_s"] = r.get("pipeline_rows_per_s")
        result["pipeline_rows_per_s"] = result.get("minilm_pipeline_rows_per_s")
    (a.out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("card", "minilm_rows_per_s", "bert_base_rows_per_s",
                                                 "pipeline_rows_per_s")}))


if __name__ == "__main__":
    main()
