"""Text normalization shared by finetune, eval and tag (the scheme is stored in the model config).

The training texts are lower-case tweets with punctuation, URLs and emoji stripped by the
dataset authors. Real input has all of those; rewriting it into the training distribution
keeps accuracy on styled text within a point of clean text (weights/*/EXPERIMENTS.md).
All steps are vectorised pyarrow compute kernels (RE2), so they cost little per row.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from emolabel.errors import ModelError

SCHEMES = ("none", "social-v1")

# Texting shorthand that the (clean) training texts spell out. Whole words only.
_SLANG = [
    ("u", "you"),
    ("ur", "your"),
    ("r", "are"),
    ("ya", "you"),
    ("cuz", "because"),
    ("cos", "because"),
    ("bc", "because"),
    ("pls", "please"),
    ("plz", "please"),
    ("thx", "thanks"),
    ("tho", "though"),
    ("rly", "really"),
    ("b4", "before"),
    ("gonna", "going to"),
    ("wanna", "want to"),
    ("2day", "today"),
]


_ANY_SLANG = r"\b(?:" + "|".join(short for short, _ in _SLANG) + r")\b"


def normalize(texts: pa.Array | pa.ChunkedArray, scheme: str) -> pa.Array | pa.ChunkedArray:
    """Rewrite a string array with `scheme`; nulls stay null."""
    if scheme == "none":
        return texts
    if scheme != "social-v1":
        raise ModelError(f"unknown normalization {scheme!r}; known: {', '.join(SCHEMES)}")
    t = pc.utf8_normalize(texts, "NFKC")  # full-width letters, ligatures -> plain
    t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, r"(?:https?://|www\.)\S+", " ")  # URLs carry no emotion
    t = pc.replace_substring_regex(t, r"(?:^|\s)@\w+", " ")  # @mentions
    t = pc.replace_substring(t, "&amp;", " and ")
    t = pc.replace_substring_regex(t, r"['’`´]", "")  # don't -> dont, as in the training texts
    # Punctuation, emoji, symbols and runs of whitespace all become one space, in one pass.
    t = pc.utf8_trim_whitespace(pc.replace_substring_regex(t, r"[^\p{L}\p{N}]+", " "))
    # Only letters, digits and single spaces are left: expand slang in the few rows that have any.
    has_slang = pc.fill_null(pc.match_substring_regex(t, _ANY_SLANG), False)
    if pc.any(has_slang).as_py():
        rows = pc.indices_nonzero(has_slang)
        fixed = pc.take(t, rows)
        for short, long in _SLANG:
            fixed = pc.replace_substring_regex(fixed, rf"\b{short}\b", long)
        t = pc.replace_with_mask(t, has_slang, fixed.combine_chunks() if isinstance(fixed, pa.ChunkedArray) else fixed)
    return t


def normalize_list(texts: list[str | None], scheme: str) -> list[str | None]:
    """The same rewrite for a Python list (used by the library API and tests)."""
    return normalize(pa.array(texts, type=pa.string()), scheme).to_pylist()


def bert_uncased_ready(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """What an uncased BERT tokenizer's normalizer and pre-tokenizer still do to social-v1 output:
    strip accents and put spaces around CJK ideographs. With this done in pyarrow, the Rust
    tokenizer can skip both steps (2.4x faster; tests check the token ids are identical)."""
    if pc.all(pc.fill_null(pc.string_is_ascii(texts), True)).as_py():
        return texts  # the common case: nothing to do
    t = pc.replace_substring_regex(pc.utf8_normalize(texts, "NFD"), r"\p{Mn}+", "")
    return pc.replace_substring_regex(t, r"(\p{Han})", r" \1 ")
