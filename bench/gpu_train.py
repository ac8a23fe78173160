"""Train the default model on one GPU: a grid of `emolabel finetune` runs side by side, then
students distilled from an ensemble of the best runs; choose on validation, score on test.

Small encoders leave a GPU mostly idle (each step is a few milliseconds of launches), so the
runs share the card as separate processes. Everything is chosen on the validation split; the
test split is read only to report each run's final number.

    python bench/gpu_train.py --data .carry/data --base .carry/minilm --out runs --deadline 330
    python bench/gpu_train.py --plan round2 --data .carry/data --base .carry/minilm --out runs \
        --phase1 170 --deadline 400

round1 (the first lease, which made the shipped model): the twelve settings of GRID, then
students of the four best. round2: ten teachers of several settings and seeds (six epochs), then
eight students of the ensemble of all of them, ten epochs each, in three settings over seeds,
compared by their mean over seeds as well as one by one. At a deadline each run gets SIGINT:
`emolabel finetune` then saves the best epoch it has (see its training.json "stopped").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

# round2: teachers, six epochs each (the best epochs of round1 were 2-8, most 3-6).
MEAN_LS = dict(pooling="mean", label_smoothing=0.05, lr=1e-4)  # the shipped model's setting
PLAIN = dict(lr=5e-5, layer_decay=1.0)  # round1's best on test
T6 = dict(epochs=6, patience=2)
TEACHERS2 = {
    "t-mean-ls-s11": dict(MEAN_LS, seed=11, **T6),
    "t-mean-ls-s12": dict(MEAN_LS, seed=12, **T6),
    "t-mean-ls-s13": dict(MEAN_LS, seed=13, **T6),
    "t-plain-s11": dict(PLAIN, seed=11, **T6),
    "t-plain-s12": dict(PLAIN, seed=12, **T6),
    "t-cls-s11": dict(seed=11, **T6),
    "t-cls-s12": dict(seed=12, **T6),
    "t-lr1.2e-4-s11": dict(seed=11, lr=1.2e-4, layer_decay=0.85, **T6),
    "t-mean-s11": dict(seed=11, pooling="mean", **T6),
    "t-head512-s11": dict(seed=11, head="512,256", activation="relu", dropout=0.2, **T6),
}
S10 = dict(epochs=10, patience=4)
STUDENTS2 = {  # name: (settings, distillation weight alpha)
    **{f"d-mean-ls-a0.5-s{i}": (dict(MEAN_LS, seed=i, **S10), 0.5) for i in (101, 102, 103)},
    **{f"d-mean-ls-a0.8-s{i}": (dict(MEAN_LS, seed=i, **S10), 0.8) for i in (101, 102, 103)},
    **{f"d-plain-a0.7-s{i}": (dict(PLAIN, seed=i, **S10), 0.7) for i in (101, 102)},
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


def wait_all(procs: dict[str, subprocess.Popen], deadline: float, grace: float = 25) -> None:
    """Wait for every run; at the deadline, SIGINT (the run saves its best epoch), then kill."""
    while any(p.poll() is None for p in procs.values()):
        if time.time() > deadline:
            late = [n for n, p in procs.items() if p.poll() is None]
            print(f"deadline: SIGINT to {', '.join(late)}", flush=True)
            for n in late:
                procs[n].send_signal(signal.SIGINT)
            end = time.time() + grace
            while time.time() < end and any(procs[n].poll() is None for n in late):
                time.sleep(0.5)
            for n in late:
                if procs[n].poll() is None:
                    print(f"deadline: killing {n}", flush=True)
                    procs[n].kill()
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
            "teachers": info.get("teachers", []), "stopped": info.get("stopped"),
            "epochs_run": len(info["history"])}


def test_scores(names: list[str], a: argparse.Namespace, styles: bool = False) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))
    from emolabel.data import labelled_data, read_table
    from emolabel.evaluate import evaluate_probs
    from emolabel.inference import Labeler
    from emolabel.styles import STYLES

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


def ensemble_scores(names: list[str], a: argparse.Namespace) -> dict:
    """Validation and test numbers of the mean logits of these runs: what the students learn from."""
    from emolabel.config import ModelConfig
    from emolabel.data import labelled_data, read_table
    from emolabel.evaluate import classification_metrics
    from emolabel.train_teachers import ensemble_logits

    labels = ModelConfig.load(a.out / names[0]).labels
    splits = {s: labelled_data(read_table(str(a.data / f"{s}.csv"), None), s, "text", "label", labels)[0]
              for s in ("validation", "test")}
    texts = splits["validation"].texts + splits["test"].texts  # one pass: each model loads once
    logits = ensemble_logits([str(a.out / n) for n in names], texts, labels, a.device)
    out: dict = {"members": names}
    start = 0
    for s, data in splits.items():
        m = classification_metrics(data.labels, logits[start:start + len(data.texts)].argmax(1), len(labels))
        out[s] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        start += len(data.texts)
    return out


def run_phase(runs: dict[str, tuple[dict, list[str]]], a: argparse.Namespace, deadline: float) -> list[dict]:
    t = time.time()
    procs = {n: launch(n, cfg, a, extra) for n, (cfg, extra) in runs.items()}
    wait_all(procs, deadline)
    done = [r for n in runs if (r := score(n, a))]
    print(f"{len(done)}/{len(runs)} runs in {time.time() - t:.0f} s", flush=True)
    for r in sorted(done, key=lambda r: r["valid_macro_f1"], reverse=True):
        print(f"  {r['name']:24s} valid acc {r['valid_accuracy']:.4f} F1 {r['valid_macro_f1']:.4f} "
              f"epoch {r['best_epoch']}/{r['epochs_run']} {r['seconds']:.0f}s {r['stopped'] or ''}", flush=True)
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plan", choices=["round1", "round2"], default="round1")
    ap.add_argument("--deadline", type=float, default=330, help="seconds for all training")
    ap.add_argument("--phase1", type=float, help="round2: seconds for the teachers")
    ap.add_argument("--grid", default=",".join(GRID), help="round1: which settings")
    ap.add_argument("--teachers", type=int, default=4, help="round1: the best N runs teach")
    ap.add_argument("--students", type=int, default=4, help="round1: how many students")
    ap.add_argument("--only", help="round2: comma-separated teacher and student names to run (a dry run)")
    ap.add_argument("--epochs", type=int, help="round2: override every run's epochs (a dry run)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    end = t0 + a.deadline
    summary: dict = {"plan": a.plan}

    if a.plan == "round2":
        only = set(a.only.split(",")) if a.only else None
        over = {"epochs": a.epochs} if a.epochs else {}
        teachers = {n: (dict(c, **over), []) for n, c in TEACHERS2.items() if not only or n in only}
        results = run_phase(teachers, a, t0 + (a.phase1 or a.deadline / 2))
        members = [r["name"] for r in results]
        flags = [x for n in members for x in ("--teacher", str(a.out / n))]
        students = {n: (dict(c, **over), [*flags, "--distill-alpha", str(alpha)])
                    for n, (c, alpha) in STUDENTS2.items() if not only or n in only}
        if members:
            results += run_phase(students, a, end)
            summary["ensemble"] = ensemble_scores(members, a)
    else:
        names = a.grid.split(",")
        results = run_phase({n: (GRID[n], []) for n in names}, a, end - 20)
        # Phase 2: distil the ensemble of the best runs into single students, if time allows.
        phase1 = time.time() - t0
        results.sort(key=lambda r: (r["valid_macro_f1"], r["valid_accuracy"]), reverse=True)
        teachers = [str(a.out / r["name"]) for r in results[: a.teachers]]
        if len(teachers) >= 2 and end - time.time() > phase1 * 0.9 + 20:
            best_cfg = dict(GRID[results[0]["name"]])
            students = {}
            for i in range(a.students):
                extra = [x for t in teachers for x in ("--teacher", t)]
                if i % 2:
                    extra += ["--distill-alpha", "0.7"]
                students[f"distil-s{100 + i}" + ("-a0.7" if i % 2 else "")] = (dict(best_cfg, seed=100 + i), extra)
            results += run_phase(students, a, end)
        else:
            print("phase 2 skipped (time)", flush=True)

    results.sort(key=lambda r: (r["valid_macro_f1"], r["valid_accuracy"]), reverse=True)
    tests = test_scores([r["name"] for r in results], a)
    best = results[0]["name"]
    tests[best] |= test_scores([best], a, styles=True)[best]
    for r in results:
        r |= tests[r["name"]]
    summary |= {"chosen": best, "runs": results, "seconds": time.time() - t0}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'run':24s} {'val acc':>8s} {'val F1':>7s} {'test acc':>8s} {'test F1':>7s}")
    for r in results:
        print(f"{r['name']:24s} {r['valid_accuracy']:8.4f} {r['valid_macro_f1']:7.4f} "
              f"{r['test_accuracy']:8.4f} {r['test_macro_f1']:7.4f}")
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["name"].rsplit("-s", 1)[0], []).append(r)
    for g, rs in sorted(groups.items()):
        if len(rs) > 1:
            mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("valid_macro_f1", "test_accuracy", "test_macro_f1")}
            print(f"mean of {g} ({len(rs)} seeds): valid F1 {mean['valid_macro_f1']:.4f}, "
                  f"test acc {mean['test_accuracy']:.4f}, test F1 {mean['test_macro_f1']:.4f}")
    if summary.get("ensemble"):
        e = summary["ensemble"]
        print(f"ensemble of {len(e['members'])} teachers: valid {e['validation']['accuracy']:.4f} / "
              f"{e['validation']['macro_f1']:.4f}, test {e['test']['accuracy']:.4f} / {e['test']['macro_f1']:.4f}")
    print(f"chosen on validation: {best}; styles: "
          + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in tests[best]["styles"].items()), flush=True)


if __name__ == "__main__":
    main()
