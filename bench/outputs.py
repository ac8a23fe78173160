"""Output formats end to end: CSV->CSV, JSONL->JSONL, CSV->.csv.gz (and .zst) against CSV->Parquet,
in the same run, plus the CSV writer alone (minimal quoting against pyarrow's quote-everything).

Every case runs `emolabel tag` in its own process on the same rows; the cases are interleaved
over --repeats rounds so that a machine that slows down (another job, heat) slows them alike,
and the median is reported. The default model is the `stub` shape (throughput.py): it costs next
to nothing, so what is timed is reading, tokenizing, the label columns and the writer, the part
the output format changes. Pass --shape minilm for the shipped model's cost.

    python bench/outputs.py --rows 200000 --repeats 3
    python bench/outputs.py --rows 200000 --shape minilm --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import DATA, REPO, SHAPES, dataset_texts, run_with_rss  # noqa: E402

# name -> (input format, output name): every output from the same rows
CASES = {
    "csv->parquet": ("csv", "out.parquet"),
    "csv->csv": ("csv", "out.csv"),
    "jsonl->jsonl": ("jsonl", "out.jsonl"),
    "csv->csv.gz": ("csv", "out.csv.gz"),
    "csv->csv.zst": ("csv", "out.csv.zst"),
    "jsonl->jsonl.gz": ("jsonl", "out.jsonl.gz"),
}


def write_inputs(texts: list[str], rows: int, folder: Path) -> dict[str, Path]:
    """The same rows as CSV (minimally quoted, as most CSVs are) and as JSON Lines."""
    import polars as pl

    reps = -(-rows // len(texts))
    frame = pl.DataFrame({"id": list(range(rows)), "text": (texts * reps)[:rows]})
    paths = {"csv": folder / "in.csv", "jsonl": folder / "in.jsonl"}
    frame.write_csv(paths["csv"])
    frame.write_ndjson(paths["jsonl"])
    return paths


def csv_writers(rows: int) -> dict[str, float]:
    """CPU seconds to write `rows` labelled rows as CSV, 8,192 at a time: today's writer and
    pyarrow's (quotes every string), best of 3."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    sys.path.insert(0, str(REPO))
    from emolabel.csv_text import encode, header

    rng = np.random.default_rng(0)
    cols = {"id": pa.array([str(i) for i in range(rows)]),
            "text": pa.array([f"i feel {'happy, really' if i % 3 == 0 else 'sad'} about \"this\" {i}" for i in range(rows)]),
            "emotion": pa.array(rng.choice(["joy", "sadness", "anger"], rows))}
    for name in ["score", "sadness", "joy", "love", "anger", "fear", "surprise"]:
        cols[f"emotion_{name}"] = pa.array(rng.random(rows, dtype=np.float32))
    table = pa.table(cols)
    batches = table.to_batches(max_chunksize=8192)

    def pyarrow_all_quoted() -> None:
        w = pa_csv.CSVWriter(io.BytesIO(), table.schema)
        for b in batches:
            w.write(b)
        w.close()

    def minimal() -> None:
        out = io.BytesIO()
        out.write(header(table.column_names, ",", True))
        for b in batches:
            out.write(encode(b, ",", True))

    def best(f) -> float:
        times = []
        for _ in range(3):
            t0 = time.process_time()
            f()
            times.append(time.process_time() - t0)
        return min(times)

    return {"pyarrow_all_quoted_s": round(best(pyarrow_all_quoted), 3), "emolabel_minimal_s": round(best(minimal), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="stub", help="random-init model of this shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--json", type=Path, help="append the result as a JSON line here")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from fake_model import random_model

    from emolabel.config import default_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="emolabel-bench-outputs-"))
    tokenizer_json = (default_model_dir() / "tokenizer.json").read_text()
    vocab = len(json.loads(tokenizer_json)["model"]["vocab"])
    random_model(tmp / "model", tokenizer_json, vocab_size=vocab, **SHAPES[args.shape])
    inputs = write_inputs(dataset_texts(args.data), args.rows, tmp)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cases = [c for c in args.cases.split(",") if c]
    times: dict[str, list[float]] = {c: [] for c in cases}
    sizes: dict[str, int] = {}
    for _ in range(args.repeats):
        for case in cases:
            fmt, name = CASES[case]
            out = tmp / name
            cmd = [sys.executable, "-m", "emolabel", "tag", str(inputs[fmt]), "-o", str(out), "--overwrite",
                   "--model", str(tmp / "model"), "--device", args.device, "-q"]
            wall, _, _ = run_with_rss(cmd, env)
            times[case].append(wall)
            sizes[case] = out.stat().st_size
    parquet = statistics.median(times["csv->parquet"]) if "csv->parquet" in times else None
    result = {"rows": args.rows, "shape": args.shape, "device": args.device, "cases": {
        c: {"seconds": round(statistics.median(t), 2), "rows_per_s": round(args.rows / statistics.median(t)),
            "mb": round(sizes[c] / 1e6, 1),
            **({"vs_parquet": round(statistics.median(t) / parquet, 2)} if parquet else {})}
        for c, t in times.items()}}
    result["csv_writer_cpu"] = csv_writers(args.rows)
    print(json.dumps(result, indent=1))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
