"""Every bad `tag` option value is a usage error (issue 22): exit 2, one line naming the option in
the CLI's words, no traceback, nothing written. A `--text-column`, `--prefix` or `--model` that
does not fit the input was exit 1, as if the input were broken."""

from __future__ import annotations

import pytest
from conftest import run_cli
from helpers import invoke

BAD = {  # the options, and what the message must name
    "encoding": (["--encoding", "nonsense"], "Unknown --encoding 'nonsense'"),
    "text_column": (["--text-column", "body"], "Column 'body' not found"),
    "text_column-nested": (["--text-column", "tags"], "Column 'tags' of"),
    "prefix": (["--prefix", "text"], "Use --prefix"),
    "model": (["--model", "{tmp}/nope"], "give --model a model folder"),
    "columns": (["--columns", "zz"], "--columns names 'zz'"),
    "device": (["--device", "tpu"], "Unknown --device 'tpu'"),
    "top_k": (["--top-k", "9"], "--top-k 9 is more than"),
    "max_tokens": (["--max-tokens", "8", "--max-length", "16"], "--max-tokens (8) must be at least --max-length"),
    "delimiter": (["--delimiter", "ab"], "--delimiter must be one character"),
    "text_columns": (["--text-columns", "id"], "--text-columns only applies with --detect-types"),
    "parquet_compression": (["--parquet-compression", "snappy"], "--parquet-compression only applies to Parquet"),
    "workers": (["--workers", "2"], "--workers only apply with --engine ray"),
    "resume": (["--resume", "-o", "-"], "--resume needs an input file and an output file"),
}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("in") / "in.parquet"
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["i feel happy", "so sad"], "tags": [["a"], []]}), path)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_option_value_exits_2_naming_it(case, src, tiny_model, tmp_path):
    args, said = BAD[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "out.jsonl")]
    model = [] if "--model" in args else ["--model", str(tiny_model)]
    r = invoke("tag", str(src), *model, *out, *args)
    assert r.exit_code == 2, r.stderr
    assert said in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_text_column_the_input_lacks_exits_2_in_a_real_process(src, tiny_model, tmp_path):
    r = run_cli("tag", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model), "--text-column", "Text")
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip().splitlines()[-1] == (
        f"Error: Column 'Text' not found in {src}. Did you mean 'text'? Available columns: id, text, tags. Use "
        "--text-column to choose.")
    assert r.stdout == b"" and list(tmp_path.iterdir()) == []
