"""One record per format (emolabel/formats.py): every choice, check, suffix and message reads the
registry, so a format registered once is known everywhere, and a format that is never read is
refused as an input format, never parsed as another one."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pyarrow as pa
import pytest
from conftest import PATIENCE, run_cli

from emolabel import formats
from emolabel.errors import OptionError

READABLE = "csv, parquet, jsonl, lines"  # today's registry: the names a message must list

# A format written only (no reader): what the issue feared would be read as JSON Lines
HTML = formats.Format("html", "HTML", (".html",), writer="emolabel.outputs:CsvTableWriter")
# A format read and written by CSV's own reader and writer under another suffix
TAB = formats.Format("tab", "Tab table", (".tab",), "emolabel.csv_reader:read_csv", "emolabel.outputs:CsvTableWriter",
                     compressions=("gzip",))


def with_html(*args: str) -> subprocess.CompletedProcess:
    """emolabel in a real subprocess whose registry also holds the write-only HTML record."""
    code = ("import sys; from emolabel import formats; "
            "formats.register(formats.Format('html', 'HTML', ('.html',), writer='emolabel.outputs:CsvTableWriter')); "
            "from emolabel.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=PATIENCE)


def choices(help_text: str, option: str) -> list[str]:
    """The [a|b|c] choices `--help` shows for `option`."""
    found = re.search(re.escape(option) + r" \[([^\]]+)\]", help_text)
    assert found, help_text
    return found.group(1).split("|")


def test_an_unknown_input_format_exits_2_naming_the_readable_ones(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\ni feel happy\n")
    r = run_cli("tag", str(src), "--input-format", "xml", "-o", str(tmp_path / "out.csv"))
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err
    assert "--input-format" in err and all(f"'{n}'" in err for n in READABLE.split(", ")), err


def test_a_write_only_format_given_as_input_format_exits_2_naming_the_readable_ones(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\ni feel happy\n")
    r = with_html("tag", str(src), "--input-format", "html", "-o", str(tmp_path / "out.csv"))
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert "--input-format" in err and all(f"'{n}'" in err for n in READABLE.split(", ")), err
    assert not (tmp_path / "out.csv").exists()
    helped = with_html("tag", "--help").stdout.decode()  # and it is an output format there
    assert "html" not in choices(helped, "--input-format") and "html" in choices(helped, "--output-format")


def test_the_library_refuses_a_write_only_input_format_and_never_reads_it_as_json_lines(monkeypatch, tmp_path):
    from emolabel.inputs import open_input, open_stream
    from emolabel.options import TagOptions

    monkeypatch.setitem(formats.REGISTRY, "html", HTML)
    message = f"`input_format` 'html' is an output format only: read {READABLE}."
    with pytest.raises(OptionError) as e:  # today: parsed as JSON Lines, one row
        open_stream("<stdin>", io.BytesIO(b'{"text": "hi"}\n'), HTML)
    assert str(e.value) == message
    with pytest.raises(OptionError) as e:
        TagOptions(input_format="html").check()
    assert str(e.value) == message
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hi"}\n')
    with pytest.raises(OptionError, match="an output format only"):
        open_input(str(src), HTML)
    with pytest.raises(OptionError) as e:
        formats.format_of([str(src)], "xml")
    assert str(e.value) == f"Unknown `input_format` 'xml': use {READABLE}."


def test_every_registered_format_is_a_choice_of_tag_help():
    r = run_cli("tag", "--help")
    assert r.returncode == 0
    text = r.stdout.decode()
    assert choices(text, "--input-format") == [f.name for f in formats.REGISTRY.values() if f.readable]
    assert choices(text, "--output-format") == [f.name for f in formats.REGISTRY.values() if f.writable]
    assert set(choices(text, "--input-format")) | set(choices(text, "--output-format")) == set(formats.REGISTRY)


def test_a_registered_format_is_known_to_suffixes_checks_and_messages(monkeypatch):
    from emolabel import outputs
    from emolabel.options import TagOptions

    monkeypatch.setitem(formats.REGISTRY, "tab", TAB)
    assert formats.from_suffix("x.TAB") is TAB and formats.from_suffix("x.tab.gz") is TAB
    assert formats.format_of(["a.tab", "b.tab"]) is TAB
    TagOptions(input_format="tab", output_format="tab").check()  # accepted as input and output
    assert outputs.output_format("o.tab", None) is TAB and outputs.output_format("o.tab.gz", None) is TAB
    with pytest.raises(OptionError, match=r"Tab table is not compressed as a whole \(zstd\); write o.tab"):
        outputs.output_format("o.tab.zst", None)  # its record takes gzip only
    with pytest.raises(OptionError) as e:
        outputs.output_format("o.unknown", None)
    assert ".jsonl, .ndjson, .json or .tab name" in str(e.value)
    with pytest.raises(OptionError, match=f"use {READABLE}, tab"):
        TagOptions(input_format="xml").check()


def test_a_registered_format_reads_and_writes_through_its_record(monkeypatch, tmp_path, tiny_model):
    import emolabel

    monkeypatch.setitem(formats.REGISTRY, "tab", TAB)
    (tmp_path / "in.csv").write_text('id,text\n1,i feel happy\n2,"so sad, today"\n')
    (tmp_path / "in.tab").write_bytes((tmp_path / "in.csv").read_bytes())
    emolabel.tag_file(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), model=str(tiny_model))
    emolabel.tag_file(str(tmp_path / "in.tab"), str(tmp_path / "out.tab"), model=str(tiny_model))
    assert (tmp_path / "out.tab").read_bytes() == (tmp_path / "out.csv").read_bytes()


def test_columns_a_format_cannot_hold_are_refused_naming_the_formats_that_can():
    from emolabel import outputs
    from emolabel.errors import OutputError

    nested = pa.schema([pa.field("l", pa.list_(pa.int64()))])
    with pytest.raises(OutputError, match=r"CSV holds flat values only: write Parquet or JSON Lines\.$"):
        outputs.check_writable(nested, formats.CSV, "o.csv")
    raw = pa.schema([pa.field("b", pa.binary())])
    with pytest.raises(OutputError, match=r"JSON has no bytes: write CSV or Parquet\.$"):
        outputs.check_writable(raw, formats.JSONL, "o.jsonl")
    outputs.check_writable(nested, formats.PARQUET, "o.parquet")  # Parquet holds both
    outputs.check_writable(raw, formats.PARQUET, "o.parquet")
