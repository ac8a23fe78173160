"""The Ray engine against the local engine on the same input, in the same run.

Builds N rows of emotion-dataset texts (bench/throughput.py's inputs), labels them with
`python -m emolabel tag in.parquet -o out.parquet` and with `emolabel.tag_file(..., engine=RayEngine(...))` (2 actors of 1 CPU
by default), both in fresh processes with the same model, and prints one JSON line: rows/s of
each end to end (process start to finish: Python, model load, for Ray also the cluster start),
Ray's own job rate (from its summary, after the cluster is up) and the ratio ray / local.

    python bench/ray_bench.py                      # 100000 rows, shipped model, CPU
    python bench/ray_bench.py --rows 5000 --workers 2 --cpus-per-worker 1
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
sys.path.insert(0, str(REPO / "bench"))
from throughput import DATA, dataset_texts, write_inputs  # noqa: E402

RAY_JOB = r"""
import json, sys
import emolabel
from emolabel.ray_engine import RayEngine
src, out, model, workers, cpus, batch, device = sys.argv[1:8]
s = emolabel.tag_file([src], out, engine=RayEngine(workers=int(workers), cpus_per_worker=float(cpus)), model=model,
                      chunk_rows=int(batch), device=device)
print(json.dumps({"rows": s.rows, "empty": s.empty, "seconds": s.seconds, "rows_per_s": s.rows_per_s}))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return wall, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--model", help="model folder [the shipped model, weights/emotion-minilm]")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per actor call")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from emolabel.config import default_model_dir

    model = str(Path(args.model).resolve() if args.model else default_model_dir())
    tmp = Path(tempfile.mkdtemp(prefix="emolabel-raybench-"))
    src = write_inputs(dataset_texts(args.data), args.rows, tmp)["parquet"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.setdefault("RAY_AUTH_MODE", "disabled")

    local_s, _ = timed([sys.executable, "-m", "emolabel", "tag", str(src), "-o", str(tmp / "local.parquet"),
                        "--model", model, "--device", args.device, "-q"], env)
    ray_s, out = timed([sys.executable, "-c", RAY_JOB, str(src), str(tmp / "ray-out"), model, str(args.workers),
                        str(args.cpus_per_worker), str(args.batch_size), args.device], env)
    summary = json.loads(out.strip().splitlines()[-1])
    if summary["rows"] != args.rows:
        raise SystemExit(f"the Ray engine wrote {summary['rows']} rows, expected {args.rows}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "rows": args.rows, "device": args.device, "cpus": cpus, "model": "shipped" if not args.model else args.model,
        "local_seconds": round(local_s, 2), "local_rows_per_s": round(args.rows / local_s),
        "ray_workers": args.workers, "ray_cpus_per_worker": args.cpus_per_worker, "ray_batch_size": args.batch_size,
        "ray_seconds": round(ray_s, 2), "ray_rows_per_s": round(args.rows / ray_s),
        "ray_job_seconds": round(summary["seconds"], 2), "ray_job_rows_per_s": round(summary["rows_per_s"]),
        "ratio_ray_over_local": round(local_s / ray_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
