"""Train the default model on one GPU: a grid of `emolabel finetune` runs side by side, then
students distilled from an ensemble of the best runs; choose on validation, score on test.

Small encoders leave a GPU mostly idle (each step is a few milliseconds of launches), so the
runs share the card as separate processes. Everything is chosen on the validation split; the
test split is read only to report each run's final number.

    python bench/gpu_train.py --data .carry/data --base .carry/minilm --out runs --deadline 330
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

GRID = {
    "cls-s1": dict(seed=1),
    "cls-s2": dict(seed=2),
    "cls-s3": dict(seed=3),
    "mean-s1": dict(seed=1, pooling="mean"),
    "mean-s2": dict(seed=2, pooling="mean"),
    "plain-lr5e-5": dict(seed=1, lr=5e-5, layer_decay=1.0),
    "lr1.2e-4-ld0.85": dict(seed=1, lr=1.2e-4, layer_decay=0.85),
    "ls0.1": dict(seed=1, label_smoothing=0.1),
    "bs16-lr6e-5": dict(seed=1, batch_size=16, lr=6e-5),
    "ep10": dict(seed=1, epochs=10, patience=4),
    "head512-256-relu": dict(seed=1, head="512,256", activation="relu", dropout=0.2),
    "mean-ls0.05-lr1e-4": dict(seed=2, pooling="mean", label_smoothing=0.05, lr=1e-4),
}


def args_for(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def launch(name: str, cfg: dict, a: argparse.Namespace, extra: list[str] | None = None) -> subprocess.Popen:
    folder = a.out / name
    cmd = [sys.executable, "-m", "emolabel", "finetune", str(a.data / "train.csv"), "--validation",
           str(a.data / "validation.csv"), "-o", str(folder), "--base", str(a.base), "--device", a.device,
           "--save-dtype", "fp16", "-q", *args_for(cfg), *(extra or [])]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log = open(a.out / f"{name}.stderr", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> None:
    while any(p.poll() is None for p in procs.values()):
        if time.time() > deadline:
            for name, p in procs.items():
                if p.poll() is None:
                    print(f"deadline: killing {name}", flush=True)
                    p.kill()
            break
        time.sleep(1)


def score(name: str, a: argparse.Namespace) -> dict | None:
    folder = a.out / name
    info_path = folder / "training.json"
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    return {"name": name, "valid_accuracy": info["validation_metrics"]["accuracy"],
            "valid_macro_f1": info["validation_metrics"]["macro_f1"], "best_epoch": info["best_epoch"],
            "seconds": info["seconds"], "temperature": info["temperature"], "train_config": info["train_config"],
            "pooling": info["model"]["pooling"], "head": info["model"]["head_hidden"],
            "teachers": info.get("teachers", [])}


def test_scores(names: list[str], a: argparse.Namespace, styles: bool = False) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))
    from emolabel.evaluate import evaluate_probs
    from emolabel.inference import Labeler
    from emolabel.styles import STYLES
    from emolabel.train import labelled_data, read_table

    out = {}
    for name in names:
        lb = Labeler(a.out / name, device=a.device, precision="fp32")
        data, _ = labelled_data(read_table(str(a.data / "test.csv"), None), "test", "text", "label", lb.labels)
        m = evaluate_probs(lb.predict_proba(data.texts), data.labels, lb.labels)
        r = {"test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"], "test_ece": m["ece"],
             "test_f1_per_class": dict(zip(lb.labels, m["f1"]))}
        if styles:
            r["styles"] = {}
            for s, fn in STYLES.items():
                ms = evaluate_probs(lb.predict_proba([fn(t) for t in data.texts]), data.labels, lb.labels)
                r["styles"][s] = {"accuracy": ms["accuracy"], "macro_f1": ms["macro_f1"]}
        out[name] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=330, help="seconds for all training")
    ap.add_argument("--grid", default=",".join(GRID))
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    end = t0 + a.deadline

    names = a.grid.split(",")
    procs = {n: launch(n, GRID[n], a) for n in names}
    wait_all(procs, end - 20)
    results = [r for n in names if (r := score(n, a))]
    print(f"phase 1: {len(results)}/{len(names)} runs in {time.time() - t0:.0f} s", flush=True)
    results.sort(key=lambda r: (r["valid_macro_f1"], r["valid_accuracy"]), reverse=True)
    for r in results:
        print(f"  {r['name']:22s} valid acc {r['valid_accuracy']:.4f} F1 {r['valid_macro_f1']:.4f} "
              f"epoch {r['best_epoch']} {r['seconds']:.0f}s", flush=True)

    # Phase 2: distil the ensemble of the best runs into single students, if time allows.
    phase1 = time.time() - t0
    teachers = [str(a.out / r["name"]) for r in results[: a.teachers]]
    if len(teachers) >= 2 and end - time.time() > phase1 * 0.9 + 20:
        best_cfg = dict(GRID[results[0]["name"]])
        students = {}
        for i in range(a.students):
            cfg = dict(best_cfg, seed=100 + i)
            extra = [x for t in teachers for x in ("--teacher", t)]
            if i % 2:
                extra += ["--distill-alpha", "0.7"]
            students[f"distil-s{100 + i}" + ("-a0.7" if i % 2 else "")] = (cfg, extra)
        procs = {n: launch(n, cfg, a, extra) for n, (cfg, extra) in students.items()}
        wait_all(procs, end)
        more = [r for n in students if (r := score(n, a))]
        print(f"phase 2: {len(more)}/{len(students)} students in {time.time() - t0:.0f} s", flush=True)
        results = sorted(results + more, key=lambda r: (r["valid_macro_f1"], r["valid_accuracy"]), reverse=True)
    else:
        print("phase 2 skipped (time)", flush=True)

    tests = test_scores([r["name"] for r in results], a)
    best = results[0]["name"]
    tests[best] |= test_scores([best], a, styles=True)[best]
    for r in results:
        r |= tests[r["name"]]
    summary = {"chosen": best, "runs": results, "seconds": time.time() - t0}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'run':24s} {'val acc':>8s} {'val F1':>7s} {'test acc':>8s} {'test F1':>7s}")
    for r in results:
        print(f"{r['name']:24s} {r['valid_accuracy']:8.4f} {r['valid_macro_f1']:7.4f} "
              f"{r['test_accuracy']:8.4f} {r['test_macro_f1']:7.4f}")
    print(f"chosen on validation: {best}; styles: "
          + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in tests[best]["styles"].items()), flush=True)


if __name__ == "__main__":
    main()
