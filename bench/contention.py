"""`emolabel tag` alone and beside other runs: the cost of a busy machine, and of OpenMP's spin-wait.

Runs the same tag job (the validation split, the default precision) once alone and then N copies at
once, under each setting of GOMP_SPINCOUNT given (libgomp's own default is 300,000; emolabel sets
1,000 unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set: see emolabel/__init__.py), alternating the
settings. Prints each run's wall-clock seconds, start-up included.

    python bench/contention.py                        # 300000 (libgomp's default) against 1000, 2 at once
    python bench/contention.py --spins 300000,1000,PASSIVE --copies 2 --rounds 2
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
DATA = REPO.parent / "shared" / "data" / "emotion" / "validation.csv"


def env_for(spin: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(REPO)
    if spin == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env["GOMP_SPINCOUNT"] = spin
    return env


def together(n: int, spin: str, src: Path, tmp: Path, extra: list[str]) -> list[float]:
    """Wall seconds of each of `n` tag runs started at once."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "emolabel", "tag", str(src), "-o", str(tmp / f"out{i}.csv"),
                               "--overwrite", "-q", *extra], env=env_for(spin)) for i in range(n)]
    ends = []
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"tag failed with exit {p.returncode}")
        ends.append(time.perf_counter() - t0)
    return ends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spins", default="300000,1000", help="GOMP_SPINCOUNT values (PASSIVE: OMP_WAIT_POLICY)")
    ap.add_argument("--copies", type=int, default=2, help="runs at once in the busy case")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--extra", default="", help="more tag options, e.g. '--precision fp32'")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="emolabel-contention-"))
    for _ in range(args.rounds):
        for spin in args.spins.split(","):
            alone = together(1, spin, args.data, tmp, args.extra.split())
            busy = together(args.copies, spin, args.data, tmp, args.extra.split())
            print(json.dumps({"spin": spin, "alone_s": round(alone[0], 2), f"{args.copies}_at_once_s":
                              [round(t, 2) for t in busy]}), flush=True)


if __name__ == "__main__":
    main()
