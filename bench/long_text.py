"""Peak memory of labelling one very long text (a 50 MB line took 7 GB before texts were cut at a
space before tokenizing), against one short text in the same run.

    python bench/long_text.py --mb 50 [--model DIR]

Each case runs in its own process (peak RSS is per process); prints both peaks and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
from emolabel.config import default_model_dir
from emolabel.inference import Labeler
lab = Labeler(sys.argv[2] or default_model_dir(), device="cpu")
words = "i feel so happy today but then again sad angry love fear surprise".split()
n = int(float(sys.argv[1]) * 1e6 / 6)  # ~6 characters a word
text = " ".join(np.random.default_rng(0).choice(words, max(n, 1)))
t = time.perf_counter()
label = lab.predict([text])[0]
print(json.dumps({"chars": len(text), "seconds": round(time.perf_counter() - t, 2), "label": label,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def run(mb: float, model: str) -> dict:
    p = subprocess.run([sys.executable, "-c", CASE, str(mb), model, str(REPO)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="size of the long text in MB")
    ap.add_argument("--model", default="", help="model folder (default: the shipped model)")
    a = ap.parse_args()
    short, long = run(0.0003, a.model), run(a.mb, a.model)
    print(json.dumps({"short": short, "long": long, "peak_ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 2)}))
