"""End-to-end throughput: `emolabel tag` against the Hugging Face pipeline, in the same run.

Both read the same CSV (or Parquet) of emotion-dataset texts and write Parquet with a label
and all six probabilities; the pipeline runs an encoder of the same shape (its weights do not
change its speed). Prints rows/s, the ratio, and each process's peak RSS.

    python bench/throughput.py --rows 20000 --baseline-rows 2000              # CPU, shipped model
    python bench/throughput.py --device cuda --rows 1000000 --baseline-rows 20000 --input parquet
    python bench/throughput.py --device cuda --shape bert-base --rows 400000 --baseline-rows 10000

Against another commit of emolabel, in the same run (issue 21: the new default against "today's
fp32"): `--against REF` checks REF out into a temporary folder and runs its `emolabel tag` on the
same input and model, alternated with this tree's (REF first in each round), with
`--against-precision` (default fp32); the medians and their ratio are printed.

    python bench/throughput.py --rows 20000 --repeats 3 --skip-baseline --against e1a0b01
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "emotion"
SHAPES = {"minilm": dict(hidden=384, layers=6, heads=12), "bert-base": dict(hidden=768, layers=12, heads=12),
          # a model that costs next to nothing: its rate is the CPU side's (read, normalize, tokenize,
          # pad, label columns, write), the proxy for the GPU end to end when no GPU is at hand
          "stub": dict(hidden=16, layers=1, heads=1, intermediate=16)}


def dataset_texts(data: Path) -> list[str]:
    texts: list[str] = []
    for split in ("train", "validation", "test"):
        with open(data / f"{split}.csv", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    return texts


def write_inputs(texts: list[str], rows: int, folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    reps = -(-rows // len(texts))
    col = (texts * reps)[:rows]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": pa.array(col, pa.string())})
    paths = {"csv": folder / f"in{rows}.csv", "parquet": folder / f"in{rows}.parquet"}
    pa_csv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def run_with_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, err


BASELINE = r'''
import sys, time, json
import numpy as np, pyarrow as pa, pyarrow.csv as pa_csv, pyarrow.parquet as pq, torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, pipeline
from transformers.utils import logging; logging.set_verbosity_error()
src, dst, tok_file, shape, device, precision, labels = sys.argv[1:8]
shape = json.loads(shape); labels = labels.split(",")
t0 = time.perf_counter()
tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                              sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
cfg = BertConfig(vocab_size=tok.vocab_size if hasattr(tok, "vocab_size") else 30522, hidden_size=shape["hidden"],
                 num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                 intermediate_size=4 * shape["hidden"], num_labels=len(labels),
                 id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
model = BertForSequenceClassification(cfg).eval()
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
model = model.to(dtype)
pipe = pipeline("text-classification", model=model, tokenizer=tok, device=device, top_k=None)
table = pq.read_table(src) if src.endswith(".parquet") else pa_csv.read_csv(src)
texts = table.column("text").to_pylist()
out = pipe(texts, batch_size=64, truncation=True)
probs = np.array([[d["score"] for d in sorted(row, key=lambda d: labels.index(d["label"]))] for row in out], np.float32)
cols = {"emotion": pa.array([labels[i] for i in probs.argmax(1)]), "emotion_score": pa.array(probs.max(1))}
for i, l in enumerate(labels):
    cols[f"emotion_{l}"] = pa.array(probs[:, i])
pq.write_table(pa.Table.from_arrays([*table.columns, *cols.values()], names=[*table.column_names, *cols]), dst)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(texts)}), file=sys.stderr)
'''


def against_checkout(ref: str, tmp: Path) -> dict:
    """An environment whose `python -m emolabel` is the package as it was at git commit `ref`."""
    folder = tmp / f"emolabel-{ref}"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "emolabel"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return dict(os.environ, PYTHONPATH=str(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000, help="rows for emolabel")
    ap.add_argument("--baseline-rows", type=int, default=2000, help="rows for the (slower) pipeline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="emolabel's --precision")
    ap.add_argument("--baseline-precision", default="fp32")
    ap.add_argument("--model", help="model folder [the shipped model]; with --shape, only its tokenizer is used")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="benchmark a random-init model of this shape")
    ap.add_argument("--input", choices=["csv", "parquet"], default="csv")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeats", type=int, default=1, help="runs of emolabel; the median is reported")
    ap.add_argument("--extra", default="", help="extra options for emolabel tag, e.g. '--batch-size 128'")
    ap.add_argument("--json", type=Path, help="append the result as a JSON line here")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--against", metavar="REF", help="also time emolabel at this git commit, alternated")
    ap.add_argument("--against-precision", default="fp32", help="--precision for the --against commit")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from emolabel.config import ModelConfig, default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir()
    tmp = Path(tempfile.mkdtemp(prefix="emolabel-bench-"))
    if args.shape:
        from fake_model import random_model

        tokenizer_json = (model_dir / "tokenizer.json").read_text()
        vocab = len(json.loads(tokenizer_json)["model"]["vocab"])
        random_model(tmp / "model", tokenizer_json, vocab_size=vocab, **SHAPES[args.shape])
        model_dir = tmp / "model"
    config = ModelConfig.load(model_dir)
    shape = dict(hidden=config.encoder["hidden_size"], layers=config.encoder["num_hidden_layers"],
                 heads=config.encoder["num_attention_heads"])
    texts = dataset_texts(args.data)
    inputs = write_inputs(texts, args.rows, tmp)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def tag(env: dict, precision: str) -> tuple[float, float]:
        cmd = [sys.executable, "-m", "emolabel", "tag", str(inputs[args.input]), "-o", str(tmp / "out.parquet"),
               "--overwrite", "--model", str(model_dir), "--device", args.device, "--precision", precision, "-q",
               *args.extra.split()]
        wall, peak, _ = run_with_rss(cmd, env)
        return wall, peak

    against_env = against_checkout(args.against, tmp) if args.against else None
    times, rss, theirs_t = [], [], []
    for _ in range(args.repeats):
        if against_env:
            theirs_t.append(tag(against_env, args.against_precision)[0])
        wall, peak = tag(env, args.precision)
        times.append(wall)
        rss.append(peak)
    times.sort()
    ours = args.rows / times[len(times) // 2]
    result = {"device": args.device, "model": str(args.model or "shipped") if not args.shape else args.shape,
              "shape": shape, "rows": args.rows, "input": args.input, "precision": args.precision,
              "emolabel_rows_per_s": round(ours), "emolabel_seconds": [round(t, 2) for t in times],
              "emolabel_peak_rss_mb": round(max(rss))}
    if against_env:
        theirs = args.rows / sorted(theirs_t)[len(theirs_t) // 2]
        result |= {"against": args.against, "against_precision": args.against_precision,
                   "against_rows_per_s": round(theirs), "against_seconds": [round(t, 2) for t in theirs_t],
                   "ratio_to_against": round(ours / theirs, 2)}
    if args.device.startswith("cuda"):
        import torch

        result["card"] = torch.cuda.get_device_name(0)
    if not args.skip_baseline:
        base_in = write_inputs(texts, args.baseline_rows, tmp)[args.input]
        script = tmp / "baseline.py"
        script.write_text(BASELINE)
        cmd = [sys.executable, str(script), str(base_in), str(tmp / "base.parquet"), str(model_dir / "tokenizer.json"),
               json.dumps(shape), args.device if args.device != "cpu" else "cpu", args.baseline_precision,
               ",".join(config.labels)]
        wall, peak, _ = run_with_rss(cmd, env)
        theirs = args.baseline_rows / wall
        result |= {"pipeline_rows": args.baseline_rows, "pipeline_rows_per_s": round(theirs),
                   "pipeline_precision": args.baseline_precision, "pipeline_peak_rss_mb": round(peak),
                   "ratio": round(ours / theirs, 2)}
    print(json.dumps(result))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
