"""The batch-invariant CPU forward (issue 21): a row's probabilities bit-identical whatever its
batch, in bf16 and fp32; `--precision auto` picks bf16 only for a model with a passing check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
import torch
from conftest import EMOTION_DATA, REPO, WORDS, make_tiny_model, run_cli

from emolabel import inference, precision_check
from emolabel.invariant import TILE, InvariantForward

rng = np.random.default_rng(7)
# Lengths from 1 to 40 words (a few texts share each length) and enough tokens for several tiles
TEXTS = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(1, 40, size=70)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny model ([CLS] pooling, GELU head) and one with mean pooling and a ReLU head."""
    root = tmp_path_factory.mktemp("models")
    return {"cls": make_tiny_model(root / "cls"),
            "mean": make_tiny_model(root / "mean", pooling="mean", activation="relu")}


def labeler(folder: Path, precision: str, **options) -> inference.Labeler:
    """A CPU Labeler: it runs the invariant forward in fp32 and bf16 (CPU_FORWARD)."""
    lab = inference.Labeler(folder, device="cpu", precision=precision, **options)
    assert lab.invariant and isinstance(lab.forward, InvariantForward)
    return lab


def probs(lab: inference.Labeler, texts: list[str], batch_size: int = 64, max_tokens: int | None = None,
          chunk: int | None = None) -> np.ndarray:
    lab.batch_size, lab.max_tokens = batch_size, max_tokens or 4096
    step = chunk or len(texts)
    return np.concatenate([lab.run(lab.prepare(pa.array(texts[i : i + step], pa.string())))
                           for i in range(0, len(texts), step)])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_rows_are_bit_identical_whatever_the_batch(models, precision, pooling):
    lab = labeler(models[pooling], precision)
    base = probs(lab, TEXTS)
    assert sum(len(e.ids) for e in lab.encoder.encode(TEXTS)) > 3 * TILE  # several tiles, a partial last one
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    others = {
        "shuffled": probs(lab, [TEXTS[i] for i in perm])[np.argsort(perm)],
        "reversed": probs(lab, TEXTS[::-1])[::-1],
        "batch size 1": probs(lab, TEXTS, batch_size=1),
        "batch size 8": probs(lab, TEXTS, batch_size=8),
        "max tokens 100": probs(lab, TEXTS, max_tokens=100),
        "chunks of 7": probs(lab, TEXTS, chunk=7),
        "alone": probs(lab, TEXTS[:12], chunk=1),
        "with other rows": probs(lab, TEXTS[:12] + [t + " happy" for t in TEXTS])[:12],
    }
    threads = torch.get_num_threads()
    try:
        for n in {1, 2} - {threads}:
            torch.set_num_threads(n)
            others[f"{n} threads"] = probs(lab, TEXTS[::-1])[::-1]
    finally:
        torch.set_num_threads(threads)
    for name, p in others.items():
        assert np.array_equal(p, base[: len(p)]), f"{precision} {pooling}: {name} moved rows by {np.abs(p - base[: len(p)]).max()}"


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_invariant_forward_computes_the_model(models, pooling):
    """fp32: the same numbers as the model's own batched forward, to rounding. bf16: its matrix
    products in bf16 (the weights cast once), the model itself and all else in fp32."""
    plain = inference.Labeler(models[pooling], device="cpu", precision="fp32")
    plain.forward = lambda ids, mask: plain.model(ids, mask)[0]  # the model's own forward, padded batches
    expected = probs(plain, TEXTS)
    got = probs(labeler(models[pooling], "fp32"), TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    bf16 = labeler(models[pooling], "bf16")
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert {w.dtype for layer in bf16.forward.weights for pair in layer.values() for w in pair} == {torch.bfloat16}
    assert (probs(bf16, TEXTS).argmax(1) == expected.argmax(1)).mean() > 0.9


def test_other_instruction_sets_are_invariant_too(models, tmp_path):
    """A CPU without AVX-512 or bf16 units, mimicked: oneDNN, ATen and MKL held to AVX2."""
    script = tmp_path / "check.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import numpy as np, torch
import test_invariant as t
print(torch.ops.mkldnn._is_mkldnn_bf16_supported())
for precision in ("bf16", "fp32"):
    lab = t.labeler(t.Path({str(models['mean'])!r}), precision)
    base = t.probs(lab, t.TEXTS)
    for p in (t.probs(lab, t.TEXTS[::-1])[::-1], t.probs(lab, t.TEXTS, batch_size=3), t.probs(lab, t.TEXTS[:5], chunk=1)):
        assert np.array_equal(p, base[: len(p)]), (precision, np.abs(p - base[: len(p)]).max())
print("invariant")
""")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "invariant"]  # no bf16 units seen: bf16 runs emulated, and invariant


def test_tag_output_is_byte_identical_whatever_the_batching(models, tmp_path):
    src = tmp_path / "in.csv"
    pa_csv.write_csv(pa.table({"text": TEXTS}), src)
    outs = []
    for name, options in (("one", ["--batch-size", "1"]), ("many", ["--batch-size", "64", "--chunk-rows", "7"])):
        out = tmp_path / f"{name}.csv"
        r = run_cli("tag", str(src), "--model", str(models["mean"]), "--precision", "bf16", "--device", "cpu",
                    "-o", str(out), "-q", *options)
        assert r.returncode == 0, r.stderr.decode()
        outs.append(out)
    assert subprocess.run(["cmp", *map(str, outs)]).returncode == 0


@pytest.fixture
def checked(models, tmp_path) -> Path:
    """A copy of the mean-pooling model whose folder records a passing bf16 check."""
    folder = tmp_path / "model"
    shutil.copytree(models["mean"], folder)
    table = tmp_path / "val.csv"
    labels = json.loads((folder / "emolabel.json").read_text())["labels"]
    pa_csv.write_csv(pa.table({"text": TEXTS, "label": [labels[i % len(labels)] for i in range(len(TEXTS))]}), table)
    result = precision_check.check(folder, precision_check.load_tables(folder, [str(table)]))
    assert result["rows"] == len(TEXTS) and 0 <= result["agreement"] <= 1
    precision_check.record(folder, result | {"passed": True})  # random weights: force the verdict
    return folder


def test_auto_is_bf16_only_with_a_passing_check_and_bf16_units(checked, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    assert inference.resolve_precision("auto", cpu, checked)[0] == "bf16"
    assert inference.resolve_precision("auto", cpu)[0] == "fp32"  # no model folder named
    lab = inference.Labeler(checked, device="cpu")
    assert lab.invariant and lab.precision == "bf16" and "passed" in lab.precision_reason
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    assert inference.resolve_precision("auto", cpu, checked)[0] == "fp32"
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    rec = json.loads((checked / precision_check.CHECK_NAME).read_text())
    precision_check.record(checked, rec | {"passed": False})
    assert inference.resolve_precision("auto", cpu, checked)[0] == "fp32"
    precision_check.record(checked, rec)
    with open(checked / "model.safetensors", "ab") as f:  # other weights: the record no longer holds
        f.write(b" ")
    assert inference.resolve_precision("auto", cpu, checked)[0] == "fp32"


def test_check_bf16_command(models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(models["cls"], folder)
    r = run_cli("check-bf16", "--model", str(folder), "-q")
    assert r.returncode == 1
    assert "training.json names no validation tables" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    assert not (folder / precision_check.CHECK_NAME).exists()
    table = tmp_path / "val.csv"
    table.write_text("text,label\n" + "".join(f"{t},joy\n" for t in TEXTS[:20]))
    r = run_cli("check-bf16", str(table), "--model", str(folder), "-q")
    assert r.returncode == 0, r.stderr.decode()
    rec = json.loads((folder / precision_check.CHECK_NAME).read_text())
    assert rec["rows"] == 20 and rec["tables"][0]["path"] == str(table)
    assert f"all 20 rows: accuracy fp32 {rec['accuracy_fp32']:.2%}" in r.stdout.decode()
    (t,) = rec["tables"]
    assert rec["passed"] == (t["agreement"] >= 0.995 and t["accuracy_fp32"] - t["accuracy_bf16"] <= 1 / 20 + 1e-12)


def test_the_bf16_check_holds_on_every_table_not_on_the_pooled_rows():
    """The shipped model's TEC table lost 2 of 1,831 rows in bf16 (0.11 point) while all six tables
    together lost 0.05 point: a pooled rule passed it, the issue's per-table rule does not."""
    tec = {"rows": 1831, "accuracy_fp32": 0.6275, "accuracy_bf16": 0.6275 - 2 / 1831, "agreement": 0.9984}
    small = {"rows": 509, "accuracy_fp32": 0.8546, "accuracy_bf16": 0.8546 - 1 / 509, "agreement": 0.998}
    assert not precision_check._holds(tec)
    assert precision_check._holds(small)  # one row on a small table is within the rule
    assert not precision_check._holds(small | {"agreement": 0.99})


SHIPPED = REPO / "weights" / "emotion-minilm"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists() or not (EMOTION_DATA / "validation.csv").exists(),
                    reason="needs the shipped model and ../shared/data/emotion/validation.csv")
def test_shipped_model_in_bf16_is_invariant_and_agrees_with_fp32():
    import csv

    with open(EMOTION_DATA / "validation.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:300]
    lab = inference.Labeler(SHIPPED, device="cpu", precision="bf16")
    assert lab.invariant
    base = probs(lab, texts)
    perm = np.random.default_rng(0).permutation(len(texts))
    assert np.array_equal(probs(lab, [texts[i] for i in perm])[np.argsort(perm)], base)
    assert np.array_equal(probs(lab, texts[::-1])[::-1], base)
    assert np.array_equal(probs(lab, texts, batch_size=8), base)
    assert np.array_equal(probs(lab, texts[:30], chunk=1), base[:30])
    fp32 = probs(inference.Labeler(SHIPPED, device="cpu", precision="fp32"), texts)
    assert (fp32.argmax(1) == base.argmax(1)).mean() >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists() or not (EMOTION_DATA / "validation.csv").exists(),
                    reason="needs the shipped model and ../shared/data/emotion/validation.csv")
def test_shipped_model_default_is_exact_per_row_through_the_cli(tmp_path):
    """Issue 21's target, at the default precision (bf16 where this CPU has bf16 units, since the
    shipped model's check passed; fp32 otherwise): the 2,000-row validation split tagged shuffled,
    reversed, at --batch-size 1/8/64, --chunk-rows 300 and --threads 1, and rows labelled one at a
    time (library calls for 200 rows, `emolabel label` for 5): every probability equal."""
    import pyarrow.parquet as pq

    texts = pa_csv.read_csv(EMOTION_DATA / "validation.csv").column("text").to_pylist()
    n = len(texts)
    labels = json.loads((SHIPPED / "emolabel.json").read_text())["labels"]
    perm = np.random.default_rng(1).permutation(n)
    for name, ids in {"in": range(n), "shuffled": perm.tolist(), "reversed": range(n - 1, -1, -1)}.items():
        pa_csv.write_csv(pa.table({"id": list(ids), "text": [texts[i] for i in ids]}), tmp_path / f"{name}.csv")
    runs = {"base": ("in", []), "shuffled": ("shuffled", []), "reversed": ("reversed", []),
            "batch 1": ("in", ["--batch-size", "1"]), "batch 8": ("in", ["--batch-size", "8"]),
            "batch 64": ("in", ["--batch-size", "64"]), "chunks of 300": ("in", ["--chunk-rows", "300"]),
            "one thread": ("shuffled", ["--threads", "1"])}
    probs = {}
    for name, (table, options) in runs.items():
        out = tmp_path / f"{name}.parquet"
        r = run_cli("tag", str(tmp_path / f"{table}.csv"), "-o", str(out), "-q", *options)
        assert r.returncode == 0, r.stderr.decode()
        t = pq.read_table(out)
        ids = np.array(t.column("id").to_pylist(), dtype=int)  # read as text (CSV columns stay text)
        probs[name] = np.stack([t.column(f"emotion_{k}").to_numpy() for k in labels], 1)[np.argsort(ids)]
    assert probs["base"].shape == (n, 6)
    for name, p in probs.items():
        assert np.array_equal(p, probs["base"]), f"{name}: moved by {np.abs(p - probs['base']).max()}"
    lab = inference.Labeler(SHIPPED)  # what `emolabel label` runs: the defaults, one text per call here
    alone = np.concatenate([lab.predict_proba([texts[i]]) for i in range(200)])
    assert np.array_equal(alone, probs["base"][:200])
    for i in (0, 7, 42, 99, 150):
        r = run_cli("label", texts[i], "--json")
        assert r.returncode == 0, r.stderr.decode()
        got = json.loads(r.stdout)
        assert [got[f"emotion_{k}"] for k in labels] == probs["base"][i].astype(float).tolist(), i
