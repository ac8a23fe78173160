"""Resident memory after each chunk the Labeler labels, with and without handing freed memory back
to the system (inference.release_free_memory, which the pipeline calls after every chunk).

    python bench/rss_chunks.py [--chunks 14] [--rows 1000] [--model DIR]

Each mode runs in its own process; prints the RSS after each chunk and the growth from the
first chunk to the last, for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE = r"""
import json, sys
sys.path.insert(0, sys.argv[5]); sys.path.insert(0, sys.argv[5] + "/bench")
from pathlib import Path
import pyarrow as pa
from throughput import dataset_texts
from emolabel.config import default_model_dir
from emolabel.inference import Labeler, release_free_memory
trim, chunks, rows, model = sys.argv[1] == "trim", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = dataset_texts(Path(sys.argv[5]).parent / "shared" / "data" / "emotion")
lab = Labeler(model or default_model_dir(), device="cpu")
out = []
for k in range(chunks):
    start = (k * rows) % (len(texts) - rows)
    lab.run(lab.prepare(pa.array(texts[start:start + rows])))
    if trim:
        release_free_memory()
    out.append(int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20)
print(json.dumps(out))
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=14)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--model", default="")
    a = ap.parse_args()
    result = {}
    for mode in ("keep", "trim"):
        p = subprocess.run([sys.executable, "-c", CASE, mode, str(a.chunks), str(a.rows), a.model, str(REPO)],
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-2000:])
        rss = json.loads(p.stdout)
        result[mode] = {"rss_mb_after_each_chunk": rss, "growth_mb": rss[-1] - rss[0]}
    print(json.dumps(result))
