"""Cost and false alarms of language.looks_non_english, against tokenizing the same rows.

    python bench/language_check.py [ROWS]

Times the check and Labeler.prepare (normalize + tokenize: the cheapest part of labelling) on
the emotion test texts (English tweets) repeated to ROWS (default 20,000), in CPU time, best of 3, and
counts the texts it flags there (each one a false alarm).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from emolabel.language import looks_non_english

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion" / "test.csv"


def best_of(fn, repeat: int = 3) -> float:
    """CPU seconds (every thread of the process), best of `repeat`: on a shared machine the wall
    clock measures the neighbours."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    english = pa_csv.read_csv(DATA).column("text").combine_chunks()
    texts = pa.concat_arrays([english] * (rows // len(english) + 1)).slice(0, rows)
    import emolabel

    labeler = emolabel.load(device="cpu")
    check = best_of(lambda: looks_non_english(texts))
    prepare = best_of(lambda: labeler.prepare(texts))
    flagged = looks_non_english(english)
    print(f"{rows:,} rows: check {check / rows * 1e6:.2f} us/row, prepare {prepare / rows * 1e6:.2f} us/row "
          f"({check / prepare:.0%} of it)")
    print(f"false alarms on {len(english):,} English test texts: {int(flagged.sum())}")
    for text in english.filter(pa.array(flagged)).to_pylist()[:10]:
        print("  ", text)


if __name__ == "__main__":
    main()
