"""One plan, two engines (issue 22): every TagOptions field is honoured by the Ray engine (the same
output as the local engine, on the tiny model) or refused up front with OptionError (exit 2 on the
command line). A field missing from FIELDS fails the test: a new option meets it too.

One Ray session for the module and two Ray jobs: the fields that can be tried together are."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'emolabel[ray]'")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
              pytest.mark.filterwarnings("ignore:The maximum number of concurrent tasks:UserWarning")]

import emolabel  # noqa: E402
from emolabel.errors import OptionError  # noqa: E402
from emolabel.options import LABELER_FIELDS, TagOptions  # noqa: E402
from emolabel.ray_engine import RayEngine  # noqa: E402

REFUSED = "refused"
TINY = "the tiny model"  # stands for the fixture's folder
# Every TagOptions field -> (a value other than its default, the run that tries it: "a", "b", or REFUSED).
# Run "a": a ';'-separated Latin-1 CSV named .txt, with ids, codes and empty cells, into JSON Lines.
# Run "b": a plain CSV into Parquet. The Labeler's fields are also checked where the actor gets them.
FIELDS = {
    "text_column": ("body", "a"),
    "model": (TINY, "a"),
    "prefix": ("mood", "a"),
    "input_format": ("csv", "a"),  # a .txt name is plain lines otherwise
    "output_format": ("jsonl", "a"),
    "batch_size": (7, "a"),
    "max_tokens": (64, "a"),
    "max_length": (16, "a"),  # texts are longer: truncated rows are counted and labelled as cut
    "chunk_rows": (32, "a"),
    "device": ("cpu", "a"),
    "precision": ("fp32", "a"),
    "threads": (1, "a"),
    "encoding": ("latin-1", "a"),
    "on_error": ("skip", REFUSED),
    "delimiter": (";", "a"),
    "detect_types": (True, "a"),  # id and n become numbers
    "text_columns": (("code",), "a"),  # "007" stays text
    "empty_null": (True, "a"),  # n's empty cells are null, so n is typed
    "min_score": (0.2, "a"),
    "columns": (("id", "code", "n", "body"), "a"),
    "probabilities": (False, "a"),
    "score": (False, "b"),
    "top_k": (2, "a"),
    "limit": (5, REFUSED),
    "overwrite": (True, "a"),  # both outputs exist already
    "resume": (True, REFUSED),
    "parquet_compression": ("snappy", "b"),
}
WORDS = ["i feel so happy today", "i am scared and nervous", "love you", "this is bad", "amazed", "i hate it"]


@pytest.fixture(autouse=True)
def torch_threads():
    """`threads` 1 sets this process's torch threads (the local engine's Labeler): put them back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray):
    """One local Ray for this module's jobs (conftest.local_ray)."""


def options(run: str, model: str) -> dict:
    return {name: model if value == TINY else value for name, (value, which) in FIELDS.items() if which == run}


def test_every_option_is_in_the_table_with_a_value_other_than_its_default():
    names = [f.name for f in dataclasses.fields(TagOptions)]
    assert sorted(FIELDS) == sorted(names), "add the new TagOptions field to FIELDS (a value, and the run that tries it)"
    default = TagOptions()
    for name, (value, run) in FIELDS.items():
        assert run in ("a", "b", REFUSED) and value != getattr(default, name), name
    assert set(RayEngine.unsupported) == {n for n, (_, run) in FIELDS.items() if run == REFUSED}


@pytest.mark.parametrize("name", [n for n, (_, run) in FIELDS.items() if run == REFUSED])
def test_an_option_ray_cannot_honour_is_refused_before_any_work(name, tiny_model, tmp_path):
    (tmp_path / "a.csv").write_text("text\ni feel happy\n")
    with pytest.raises(OptionError, match=f"`{name}` .*not possible with `engine` ray"):
        emolabel.tag_file(str(tmp_path / "a.csv"), str(tmp_path / "out"), engine=RayEngine(workers=1),
                          model=str(tiny_model), **{name: FIELDS[name][0]})
    assert not (tmp_path / "out").exists()


def _input_a(path) -> list[str]:
    """Run a's input and its texts: Latin-1, ';'-separated, codes with leading zeros, empty n cells."""
    texts = [f"café {WORDS[i % len(WORDS)]} " + " ".join(["happy"] * (i % 25)) for i in range(60)] + [""]
    lines = ["id;code;n;body;dropped"] + [f"{i};{i:03d};{'' if i % 7 == 3 else i * 2};{t};x" for i, t in enumerate(texts)]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return texts


def _rows(path, fmt: str) -> list[dict]:
    files = sorted(path.glob(f"*.{fmt}")) if path.is_dir() else [path]
    if fmt == "jsonl":
        return [json.loads(line) for p in files for line in p.read_text().splitlines()]
    return [row for p in files for row in pq.read_table(p).to_pylist()]


def _same(local: list[dict], ray_rows: list[dict]) -> None:
    """The same rows (joined on id), the same keys in the same order, the same values (scores to 1e-5:
    the engines batch rows differently)."""
    got = {row["id"]: row for row in ray_rows}
    assert len(got) == len(ray_rows) == len(local)
    for want in local:
        row = got[want["id"]]
        assert list(row) == list(want)
        for key, value in want.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, abs=1e-5), key
            else:
                assert row[key] == value, key


def test_every_other_option_gives_the_local_engines_output_on_ray(tiny_model, tmp_path):
    src = tmp_path / "in.txt"
    texts = _input_a(src)
    local_out, ray_out = tmp_path / "l.jsonl", tmp_path / "r"
    local_out.write_text("old\n")
    ray_out.mkdir()
    (ray_out / "old.jsonl").write_text("old\n")
    opts = options("a", str(tiny_model))
    local = emolabel.tag_file(str(src), str(local_out), **opts)
    summary = emolabel.tag_file(str(src), str(ray_out), engine=RayEngine(workers=1, id_column="id"), **opts)
    want = _rows(local_out, "jsonl")
    assert [row["body"] for row in want] == [t or None for t in texts]  # Latin-1, ';', from a .txt; empty: null
    assert want[0]["id"] == 0 and want[0]["code"] == "000" and want[3]["n"] is None  # typed; codes kept as text
    assert list(want[0]) == ["id", "code", "n", "body", "mood", "mood_score", "mood_top1", "mood_top1_score",
                             "mood_top2", "mood_top2_score", "mood_status"]
    _same(want, _rows(ray_out, "jsonl"))
    assert not (ray_out / "old.jsonl").exists()
    for name in ("rows", "empty", "truncated", "uncertain", "non_english", "label_counts", "types"):
        assert getattr(summary, name) == getattr(local, name), name
    assert local.truncated > 0 and local.empty == 1


def test_parquet_options_give_the_local_engines_output_on_ray(tiny_model, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},{WORDS[i % len(WORDS)]} {i}\n" for i in range(40)))
    opts = options("b", str(tiny_model)) | {"model": str(tiny_model), "device": "cpu", "precision": "fp32"}
    emolabel.tag_file(str(src), str(tmp_path / "l.parquet"), **opts)
    emolabel.tag_file(str(src), str(tmp_path / "r"), engine=RayEngine(workers=1, id_column="id"), **opts)
    _same(_rows(tmp_path / "l.parquet", "parquet"), _rows(tmp_path / "r", "parquet"))
    for part in [tmp_path / "l.parquet", *(tmp_path / "r").glob("*.parquet")]:
        assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "SNAPPY"


def test_the_ray_actors_labeler_gets_every_labeler_option(tiny_model, tmp_path, monkeypatch):
    """What output cannot show (batch sizes, threads): the actor builds its Labeler from the plan."""
    import inspect

    from emolabel import inference
    from emolabel.plan import make_plan
    from emolabel.ray_engine import LabelerActor

    takes = [p for p in inspect.signature(inference.Labeler.__init__).parameters if p not in ("self", "model_dir")]
    assert sorted(takes) == sorted(LABELER_FIELDS)  # every Labeler argument is a TagOptions field the plan passes
    given: dict = {}

    class Recorder:
        def __init__(self, model_dir, **settings):
            given.update(settings, model_dir=model_dir)

    monkeypatch.setattr(inference, "Labeler", Recorder)
    for name in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS"):  # the actor sets them; put them back afterwards
        monkeypatch.setenv(name, "1")
    src = tmp_path / "in.txt"
    _input_a(src)
    opts = options("a", str(tiny_model))
    plan = make_plan(str(src), str(tmp_path / "r"), TagOptions(**opts), RayEngine(workers=1, id_column="id"))
    LabelerActor(plan, threads=1)
    assert set(LABELER_FIELDS) <= {n for n, (_, run) in FIELDS.items() if run != REFUSED}
    assert {name: given[name] for name in LABELER_FIELDS} == {name: opts[name] for name in LABELER_FIELDS}
    assert given["model_dir"] == tiny_model.resolve()
