"""The Ray Data engine (emolabel.ray_engine) on a private 2-CPU local Ray, with the tiny model.

Each job runs in a thread with a deadline (pytest-timeout is not a dependency), so a Ray hang
(e.g. actors starving the read tasks, ray-project/ray#44687) fails a test instead of the run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import PATIENCE
from helpers import invoke

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'emolabel[ray]'")
# Ray Data's own start-up notices, not ours
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
              pytest.mark.filterwarnings("ignore:The maximum number of concurrent tasks:UserWarning")]

import emolabel  # noqa: E402
from emolabel.errors import InputError, InputOptionError, OptionError, OutputError  # noqa: E402
from emolabel.ray_engine import CRASH_ENV, RAY_MISSING, SUCCESS, RayEngine  # noqa: E402

JOB_TIMEOUT = PATIENCE  # a hang safety net, not a speed check: a healthy job takes about 5 s here
WORDS = ["i feel so happy today", "i am scared and nervous", "love you", "this is bad", "amazed", "i hate it"]


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray):
    """One local Ray for this module's jobs (conftest.local_ray)."""


def tag_with_ray(inputs, output, *, workers=1, id_column=None, **options):
    """emolabel.tag_file on the Ray engine, as the library is called."""
    return emolabel.tag_file(inputs, output, engine=RayEngine(workers=workers, id_column=id_column), **options)


def run_job(*args, **kwargs):
    """tag_with_ray with a deadline; its exception, if any, re-raised here."""
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = tag_with_ray(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(JOB_TIMEOUT)
    if t.is_alive():
        pytest.fail(f"tag_with_ray did not finish in {JOB_TIMEOUT}s (a Ray hang?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def texts(n: int, seed: int = 0) -> list[str | None]:
    rng = np.random.default_rng(seed)
    out: list[str | None] = []
    for i in range(n):
        if i % 17 == 5:
            out.append(None if i % 2 else "   ")  # no text: null labels
        else:
            out.append(f"{WORDS[rng.integers(len(WORDS))]} {WORDS[rng.integers(len(WORDS))]} {i}")
    return out


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


def test_same_labels_and_probabilities_as_local_engine(tiny_model, tmp_path):
    from emolabel.inference import Labeler

    n = 300
    col = texts(n)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array([f"r{i}" for i in range(n)]), "text": col}), src)
    out = tmp_path / "out"
    summary = run_job([str(src)], str(out), model=str(tiny_model), id_column="id", workers=2,
                      chunk_rows=64, device="cpu", precision="fp32")
    expected = Labeler(tiny_model, device="cpu", precision="fp32").predict_proba(col)
    labels = Labeler(tiny_model, device="cpu").labels
    got = pq.read_table(out).to_pylist()
    assert summary.rows == n == len(got)
    assert summary.empty == sum(1 for t in col if t is None or not t.strip())
    assert "emotion_row_id" not in got[0]  # id_column given: no extra id
    for row in got:
        i = int(row["id"][1:])
        assert row["text"] == col[i]
        if np.isnan(expected[i, 0]):
            assert row["emotion"] is None and row["emotion_score"] is None
            continue
        probs = np.array([row[f"emotion_{name}"] for name in labels], np.float32)
        np.testing.assert_allclose(probs, expected[i], atol=1e-5)
        assert row["emotion"] == labels[int(expected[i].argmax())]


def test_one_parquet_file_every_row_once_across_actors(tiny_model, tmp_path):
    n = 700
    src = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": texts(n, 1), "n": pa.array(range(n), pa.int64())}), src)
    out = tmp_path / "out"
    summary = run_job([str(src)], str(out), model=str(tiny_model), workers=2, chunk_rows=64, device="cpu")
    table = pq.read_table(out)
    ids = table.column("emotion_row_id").to_pylist()
    assert len(ids) == len(set(ids)) == n == summary.rows
    assert set(ids) == {f"{src}#{i}" for i in range(n)}
    # the id names the row it came from
    for rid, i in zip(ids, table.column("n").to_pylist()):
        assert rid.endswith(f"#{i}")
    assert len(summary.files) > 1  # split into several blocks: both actors had work to share


def test_many_csv_files_by_glob_every_row_once(tiny_model, tmp_path):
    sizes = [120, 1, 260]
    for k, size in enumerate(sizes):
        t = pa.table({"zip": [f"{k:02d}{i:05d}" for i in range(size)], "text": texts(size, k)})
        pa_csv.write_csv(t, tmp_path / f"part{k}.csv")
    out = tmp_path / "out"
    summary = run_job([str(tmp_path / "part*.csv")], str(out), model=str(tiny_model), workers=2,
                      chunk_rows=50, output_format="csv", device="cpu")
    parts = sorted(out.glob("*.csv"))
    assert parts and [str(p) for p in parts] == sorted(summary.files)
    opts = pa_csv.ConvertOptions(column_types={"zip": pa.string(), "emotion_row_id": pa.string()})
    table = pa.concat_tables([pa_csv.read_csv(p, convert_options=opts) for p in parts])
    ids = table.column("emotion_row_id").to_pylist()
    want = {f"{tmp_path / f'part{k}.csv'}#{i}" for k, size in enumerate(sizes) for i in range(size)}
    assert len(ids) == len(set(ids)) == sum(sizes) == summary.rows
    assert set(ids) == want
    for rid, z in zip(ids, table.column("zip").to_pylist()):  # values round-trip as text ("00012")
        k = int(rid.rsplit("part", 1)[1].split(".csv")[0])
        assert z == f"{k:02d}{int(rid.rsplit('#', 1)[1]):05d}"


def test_worker_crash_is_survived_and_rows_written_once(tiny_model, tmp_path, monkeypatch):
    n = 400
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"text": "{t}"}}\n' if t else '{"text": null}\n' for t in texts(n, 2)))
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    out = tmp_path / "out"
    summary = run_job([str(src)], str(out), model=str(tiny_model), workers=2, chunk_rows=50,
                      output_format="jsonl", device="cpu")
    assert marker.exists()  # an actor did die (os._exit) mid-job
    import json

    rows = [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]
    ids = [r["emotion_row_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n == summary.rows
    assert set(ids) == {f"{src}#{i}" for i in range(n)}


def test_uri_inputs_and_output_object_store_path(tiny_model, tmp_path):
    """file:// takes the object-store path: a URI glob, no rename, _SUCCESS written last."""
    for k in range(2):
        pq.write_table(pa.table({"text": texts(30, k)}), tmp_path / f"in{k}.parquet")
    out = f"file://{tmp_path}/out"
    summary = run_job([f"file://{tmp_path}/in*.parquet"], out, model=str(tiny_model), chunk_rows=16, device="cpu")
    assert (tmp_path / "out" / SUCCESS).exists() and summary.rows == 60
    assert all(f.startswith(out + "/") for f in summary.files)
    ids = set(pq.read_table(tmp_path / "out").column("emotion_row_id").to_pylist())
    assert ids == {f"file://{tmp_path}/in{k}.parquet#{i}" for k in range(2) for i in range(30)}
    with pytest.raises(OutputError, match="already exists"):
        tag_with_ray([f"file://{tmp_path}/in0.parquet"], out, model=str(tiny_model))


def test_success_marker_no_temp_folder_and_overwrite(tiny_model, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts(50)}), src)
    out = tmp_path / "out"
    run_job([str(src)], str(out), model=str(tiny_model), chunk_rows=32, device="cpu")
    assert (out / SUCCESS).exists()
    assert siblings(out) == []
    with pytest.raises(OutputError, match="already exists"):
        tag_with_ray([str(src)], str(out), model=str(tiny_model), device="cpu")
    (out / "stale.parquet").write_bytes(b"old")
    summary = run_job([str(src)], str(out), model=str(tiny_model), chunk_rows=32, device="cpu", overwrite=True)
    assert summary.rows == 50 and (out / SUCCESS).exists()
    assert not (out / "stale.parquet").exists() and siblings(out) == []


def test_failing_job_names_the_file_and_leaves_no_output(tiny_model, tmp_path):
    good = tmp_path / "a.csv"
    bad = tmp_path / "b.csv"
    pa_csv.write_csv(pa.table({"text": texts(40)}), good)
    pa_csv.write_csv(pa.table({"body": texts(40)}), bad)
    out = tmp_path / "out"
    with pytest.raises(InputOptionError) as err:  # a `text_column` the second file lacks: exit 2, as locally
        run_job([str(good), str(bad)], str(out), model=str(tiny_model), chunk_rows=16, device="cpu")
    assert str(bad) in str(err.value) and "'text' not found" in str(err.value)
    assert type(err.value) is InputOptionError  # a plain emolabel error, not Ray's wrapper
    assert not out.exists() and siblings(out) == []


def test_up_front_errors(tiny_model, tmp_path):
    with pytest.raises(InputError, match="No files match"):
        tag_with_ray([str(tmp_path / "*.csv")], str(tmp_path / "o"), model=str(tiny_model))
    with pytest.raises(InputError, match="format"):  # (.txt is a format now: plain text lines)
        (tmp_path / "x.dat").write_text("text\nhi\n")
        tag_with_ray([str(tmp_path / "x.dat")], str(tmp_path / "o"), model=str(tiny_model))
    with pytest.raises(OptionError, match="Unknown `output_format`"):
        tag_with_ray([str(tmp_path / "x.dat")], str(tmp_path / "o"), model=str(tiny_model), output_format="xlsx")


def test_missing_ray_gives_a_clear_message(tiny_model, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import emolabel\n"
        "from emolabel.errors import EmolabelError\n"
        "try:\n"
        f"    emolabel.tag_file([{str(src)!r}], {str(tmp_path / 'out')!r}, model={str(tiny_model)!r}, engine='ray')\n"
        "except EmolabelError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 3, p.stderr
    assert p.stdout.strip() == RAY_MISSING
    assert not (tmp_path / "out").exists()


def test_cli_engine_ray_matches_the_local_engine(tiny_model, tmp_path):
    """`emolabel tag ... --engine ray`: the same command line, the same rows and labels as local."""
    import pyarrow.parquet as pq
    from helpers import invoke

    for i in range(2):
        (tmp_path / f"in{i}.csv").write_text("id,text\n" + "".join(f"{i}-{k},i feel happy {k}\n" for k in range(50)))
    out = tmp_path / "out"
    r = invoke("tag", str(tmp_path / "in0.csv"), str(tmp_path / "in1.csv"), "-o", str(out), "--engine", "ray",
               "--model", str(tiny_model), "--workers", "1", "--id-column", "id", "--precision", "fp32")
    assert r.exit_code == 0, r.stderr
    assert "tagged 100 rows" in r.stderr and (out / SUCCESS).exists()
    got = pq.read_table(out).to_pylist()
    assert sorted(row["id"] for row in got) == sorted(f"{i}-{k}" for i in range(2) for k in range(50))
    local = invoke("tag", str(tmp_path / "in0.csv"), "-o", str(tmp_path / "l.parquet"), "--model", str(tiny_model),
                   "--precision", "fp32")
    assert local.exit_code == 0
    ref = {row["id"]: row for row in pq.read_table(tmp_path / "l.parquet").to_pylist()}
    for row in got:
        if row["id"] in ref:
            assert row["emotion"] == ref[row["id"]]["emotion"]
            assert abs(row["emotion_joy"] - ref[row["id"]]["emotion_joy"]) < 1e-5
    bad = invoke("tag", str(tmp_path / "in0.csv"), "-o", "-", "--engine", "ray", "--model", str(tiny_model))
    assert bad.exit_code == 2 and "--output FOLDER" in bad.stderr


def test_an_output_folder_holding_an_input_is_refused_before_anything_is_deleted(tiny_model, tmp_path):
    """`tag 'data/*.csv' -o data --engine ray --overwrite` replaced the folder holding the inputs."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("text\ni feel happy\n")
    for out in (data, tmp_path):
        with pytest.raises(OutputError, match="holds the input"):
            tag_with_ray([str(data / "*.csv")], str(out), model=str(tiny_model), overwrite=True)
    assert (data / "a.csv").read_text() == "text\ni feel happy\n"


@pytest.mark.parametrize("flag", [["--on-error", "skip"], ["--resume"], ["--limit", "1"]])
def test_options_the_ray_engine_cannot_honour_are_refused(tiny_model, tmp_path, flag):
    (tmp_path / "a.csv").write_text("text\ni feel happy\n")
    r = invoke("tag", str(tmp_path / "a.csv"), "-o", str(tmp_path / "out"), "--engine", "ray", "--model",
               str(tiny_model), *flag)
    assert r.exit_code == 2 and flag[0] in r.stderr and "--engine ray" in r.stderr
    assert not (tmp_path / "out").exists()


def test_reader_and_labeler_options_are_honoured_as_the_local_engine_does(tiny_model, tmp_path):
    """--encoding, --max-length, --batch-size, --max-tokens, --threads and --min-score were dropped or
    refused on Ray; now both engines give the same rows and the same counts."""
    import json

    rows = [f"café {WORDS[i % len(WORDS)]} " + " ".join(["happy"] * (i % 40)) for i in range(60)] + [""]
    src = tmp_path / "in.csv"
    src.write_bytes(("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(rows))).encode("latin-1"))
    opts = ["--encoding", "latin-1", "--max-length", "16", "--batch-size", "7", "--max-tokens", "64",
            "--threads", "1", "--min-score", "0.99", "--precision", "fp32", "--model", str(tiny_model)]
    local = invoke("tag", str(src), "-o", str(tmp_path / "l.jsonl"), *opts)
    ray_run = invoke("tag", str(src), "-o", str(tmp_path / "r"), "--engine", "ray", "--workers", "1",
                     "--id-column", "id", "--output-format", "jsonl", *opts)
    assert local.exit_code == 0 and ray_run.exit_code == 0, local.stderr + ray_run.stderr
    want = {r["id"]: r for r in map(json.loads, (tmp_path / "l.jsonl").read_text().splitlines())}
    got = {r["id"]: r for p in (tmp_path / "r").glob("*.jsonl") for r in map(json.loads, p.read_text().splitlines())}
    assert sorted(got) == sorted(want) and got["0"]["text"] == rows[0]
    for k, row in want.items():
        assert got[k]["emotion"] == row["emotion"] and got[k]["emotion_status"] == row["emotion_status"]
        assert got[k]["emotion_score"] == row["emotion_score"]  # the CPU forward is batch-invariant: exact
    # one summary, the same counts: truncated at 16 tokens, uncertain under 0.99 (the tiny model is never sure), the empty row
    import re

    counts = [re.search(r"tagged 61 rows .*? -> [^;]*; (.*?)(; fp32 \(as asked\))?$", err, re.M).group(1)
              for err in (local.stderr, ray_run.stderr)]  # the local run says its precision; Ray's workers choose theirs
    assert counts[0] == counts[1] and "1 empty" in counts[0] and "uncertain" in counts[0]
    assert re.search(r"[1-9]\d* truncated", counts[0])


def test_files_of_other_types_are_refused_as_the_local_engine_does(tiny_model, tmp_path):
    """Ray wrote {"v": 1.5} and {"v": 1} as 1.0 and 1.5 under one type: a silent retype."""
    (tmp_path / "a.jsonl").write_text('{"text": "i feel happy", "v": 1}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "so sad", "v": 1.5}\n')
    with pytest.raises(InputError, match=r"b.jsonl has columns .*v \(double\).*files labelled together need the same"):
        run_job([str(tmp_path / "*.jsonl")], str(tmp_path / "out"), model=str(tiny_model), chunk_rows=16, device="cpu")
    assert not (tmp_path / "out").exists()


def test_column_selection_and_language_count_as_the_local_engine(tiny_model, tmp_path):
    """--columns, --no-probabilities, --no-score and --top-k: Ray writes what the local engine
    writes (with its join key), and counts the same texts as non-English."""
    from emolabel import tag_file

    n = 150
    col = texts(n, 3)
    col[7], col[90] = "ärgerlich", "Estoy muy feliz hoy"
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i:03d}" for i in range(n)], "text": col, "n": pa.array(range(n))}), src)
    opts = dict(model=str(tiny_model), columns=["id"], probabilities=False, score=False, top_k=2, device="cpu",
                precision="fp32", chunk_rows=64)
    local = tag_file(str(src), str(tmp_path / "local.parquet"), **opts)
    summary = run_job([str(src)], str(tmp_path / "out"), id_column="id", workers=2, **opts)
    want = pq.read_table(tmp_path / "local.parquet")
    got = pq.read_table(tmp_path / "out").sort_by("id")
    assert got.column_names == want.column_names == ["id", "emotion", "emotion_top1", "emotion_top1_score",
                                                     "emotion_top2", "emotion_top2_score"]
    for name in got.column_names:
        if name.endswith("_score"):
            np.testing.assert_allclose(np.array(got.column(name).to_pylist(), float),
                                       np.array(want.column(name).to_pylist(), float), atol=1e-5)
        else:
            assert got.column(name).to_pylist() == want.column(name).to_pylist()
    assert summary.non_english == local.non_english == 2 and summary.empty == local.empty
