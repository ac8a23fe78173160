"""Peak RSS of `emolabel tag` against input size: it must not grow with the number of rows.

A tiny random-init model stands in for the shipped one (this measures the streaming, not the
arithmetic). For each format, file and stdin, 100k and 1M rows; prints the peak RSS of each
run and the growth from 100k to 1M rows.

The peak is taken by a small launcher process: Linux carries a parent's peak RSS into a forked
child's ru_maxrss (the high-water mark survives fork and exec), so wait4() on a child of this
script, which holds the whole generated table, reported this script's memory, not emolabel's.

    python bench/memory.py                      # 100k and 1M rows, csv/jsonl/parquet, file and stdin
    python bench/memory.py --sizes 20000,200000 --formats csv
    python bench/memory.py --model shipped --sizes 10000,40000 --formats csv --modes file   # the real model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs the command as its child and prints the child's peak RSS, in KiB, on stderr. It is small,
# so the floor it passes on to the child's ru_maxrss (see above) is a few MB.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\n{usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--formats", default="csv,jsonl,parquet")
    ap.add_argument("--modes", default="file,stdin")
    ap.add_argument("--model", help="a model folder, or 'shipped' (default: a tiny random model: the streaming only)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq
    from conftest import make_tiny_model
    from throughput import dataset_texts

    tmp = Path(tempfile.mkdtemp(prefix="emolabel-mem-"))
    if a.model == "shipped":
        from emolabel.config import default_model_dir

        model = default_model_dir()
    else:
        model = Path(a.model) if a.model else make_tiny_model(tmp / "tiny")
    texts = dataset_texts(REPO.parent / "shared" / "data" / "emotion")
    results = []
    for n in map(int, a.sizes.split(",")):
        col = (texts * (n // len(texts) + 1))[:n]
        table = pa.table({"id": pa.array(range(n), pa.int64()), "text": col})
        for fmt in a.formats.split(","):
            src = tmp / f"in{n}.{fmt}"
            if fmt == "csv":
                pa_csv.write_csv(table, src)
            elif fmt == "parquet":
                pq.write_table(table, src, row_group_size=65536)
            else:
                import polars as pl

                pl.from_arrow(table).write_ndjson(src)
            for mode in a.modes.split(","):
                out = tmp / f"out.{fmt}"
                cmd = [sys.executable, "-m", "emolabel", "tag", "-" if mode == "stdin" else str(src), "-o", str(out),
                       "--overwrite", "--model", str(model), "-q", "--input-format", fmt]
                t0 = time.perf_counter()
                with open(src, "rb") as stdin:
                    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *cmd],
                                              stdin=stdin if mode == "stdin" else None, capture_output=True,
                                              env=dict(os.environ, PYTHONPATH=str(REPO)))
                if launched.returncode != 0:
                    raise SystemExit(f"failed: {' '.join(cmd)}\n{launched.stderr.decode()[-2000:]}")
                peak_kb = int(launched.stderr.decode().split()[-1])
                r = {"rows": n, "format": fmt, "input": mode, "peak_rss_mb": round(peak_kb / 1024),
                     "seconds": round(time.perf_counter() - t0, 1)}
                print(json.dumps(r), flush=True)
                results.append(r)
    sizes = sorted({r["rows"] for r in results})
    if len(sizes) >= 2:
        print(f"\n| format | input | peak RSS {sizes[0]:,} rows | peak RSS {sizes[-1]:,} rows | growth |")
        print("| --- | --- | --- | --- | --- |")
        for fmt in a.formats.split(","):
            for mode in a.modes.split(","):
                lo = next(r for r in results if r["rows"] == sizes[0] and r["format"] == fmt and r["input"] == mode)
                hi = next(r for r in results if r["rows"] == sizes[-1] and r["format"] == fmt and r["input"] == mode)
                print(f"| {fmt} | {mode} | {lo['peak_rss_mb']} MB | {hi['peak_rss_mb']} MB | "
                      f"{hi['peak_rss_mb'] - lo['peak_rss_mb']:+d} MB |")
    if a.json:
        a.json.write_text("\n".join(json.dumps(r) for r in results) + "\n")


if __name__ == "__main__":
    main()
