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
    t = pc.replace_substring_regex(t, r"[^\p{L}\p{N}\s]+", " ")  # punctuation, emoji, symbols
    t = pc.replace_substring_regex(t, r"\s+", " ")
    for short, long in _SLANG:  # only letters, digits and single spaces are left by now
        t = pc.replace_substring_regex(t, rf"\b{short}\b", long)
    return pc.utf8_trim_whitespace(t)


def normalize_list(texts: list[str | None], scheme: str) -> list[str | None]:
    """The same rewrite for a Python list (used by the library API and tests)."""
    return normalize(pa.array(texts, type=pa.string()), scheme).to_pylist()
