"""The readers stream: memory does not grow with the file (issue 4's flat-memory target).

Peak RSS itself is measured by bench/memory.py; these tests pin the mechanisms that keep it flat,
without timing anything.
"""

from __future__ import annotations

import csv
import io
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from emolabel.csv_reader import _RowBlocks
from emolabel.inputs import open_input

field = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\'é😀')), max_size=300)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(field, min_size=2, max_size=2), max_size=30), piece=st.sampled_from([1, 7, 64, 1024]))
def test_pieces_end_at_row_ends_and_lose_nothing(rows, piece):
    ends, out = [], io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    for row in rows:
        w.writerow(row)
        ends.append(len(out.getvalue().encode()))
    data = out.getvalue().encode()
    header = b"a,b\n"
    stream = _RowBlocks(header, io.BytesIO(data), piece=piece)
    pieces = iter(lambda: stream.read(1 << 20), b"")
    got, pos, boundaries = [], -len(header), {0, *ends}
    for p in pieces:
        got.append(p)
        pos += len(p)
        if pos >= 0:
            assert pos in boundaries, "a piece ended inside a row"
    assert b"".join(got) == header + data


def test_a_row_longer_than_a_piece_stays_whole():
    long = "x\n" * 5000  # 10 kB, with newlines inside the quotes
    data = f'1,"{long}"\n2,short\n'.encode()
    stream = _RowBlocks(b"id,text\n", io.BytesIO(data), piece=512)
    pieces = list(iter(lambda: stream.read(1 << 20), b""))
    assert any(p.startswith(b'1,"') and long.encode() in p for p in pieces), [len(p) for p in pieces]


def test_a_read_never_exceeds_the_size_asked_for():
    stream = _RowBlocks(b"h\n", io.BytesIO(b'"' + b"y" * 10_000 + b'"\n'), piece=256)
    sizes = [len(p) for p in iter(lambda: stream.read(1000), b"")]
    assert max(sizes) <= 1000 and sum(sizes) == 10_005


def _position(path) -> int:
    """How far this process has read `path`: the offset of its open descriptor (Linux /proc)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    return int(next(line for line in f if line.startswith("pos:")).split()[1])
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


def test_csv_reading_stays_near_the_parser(tmp_path):
    """pyarrow reads 32 blocks ahead; 16 MB blocks used to pull a whole 40 MB file into memory."""
    path = tmp_path / "big.csv"
    line = "i feel rather strange about all of this to be honest with you\n"
    with open(path, "w") as f:
        f.write("text\n")
        f.write(line * (40_000_000 // len(line)))
    reader = open_input(str(path))
    first = next(iter(reader))
    time.sleep(0.5)  # let any read-ahead run
    ahead = _position(path)
    reader.close()
    assert first.num_rows > 0
    assert ahead < 16_000_000, f"read {ahead:,} bytes of 40 MB ahead of the first chunk"


def test_parquet_reading_keeps_one_row_group(tmp_path):
    """pre_buffer would cache every row group read so far: memory grew with the file."""
    rng = np.random.default_rng(0)
    texts = [rng.bytes(200).hex() for _ in range(160_000)]  # ~64 MB of incompressible text
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=10_000, compression="none")
    reader = open_input(str(path))
    peak = 0
    for _ in reader:
        peak = max(peak, pa.total_allocated_bytes())
    reader.close()
    assert peak < 24_000_000, f"{peak:,} bytes held while reading a {path.stat().st_size:,}-byte file"
