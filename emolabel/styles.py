"""Deterministic rewrites of clean texts in the styles real users write in.

The emotion texts are lower-case with no punctuation; real posts have capitals, punctuation,
emoji, URLs, mentions and texting slang. `emolabel eval --styles` scores a model on each
rewrite of the test split, to show how much accuracy such styling costs. Every choice is
keyed on a hash of the text (never on its label), so a rewrite is the same on every run.
"""

from __future__ import annotations

import hashlib
import re

_CONTRACTIONS = {
    "dont": "don't", "didnt": "didn't", "cant": "can't", "wont": "won't", "isnt": "isn't",
    "im": "I'm", "ive": "I've", "id": "I'd", "ill": "I'll", "youre": "you're", "thats": "that's",
    "doesnt": "doesn't", "wasnt": "wasn't", "couldnt": "couldn't", "wouldnt": "wouldn't",
}
_SLANG = {"you": "u", "are": "r", "your": "ur", "because": "cuz", "please": "pls", "thanks": "thx",
          "really": "rly", "though": "tho", "going to": "gonna", "want to": "wanna", "before": "b4"}
_EMOJI = ["😂", "😭", "❤️", "🙏", "😊", "🔥", "😍", "😩", "👍", "🤔", "😅", "💯", "🙄", "✨", "😬"]
_ENDINGS = ["!", "!!!", "...", ".", "?!", " :)", " lol", ""]
_URLS = ["https://t.co/x7Yq2LmK", "http://bit.ly/3abcXYZ", "www.example.com/post/123"]
_MENTIONS = ["@jess_k", "@TheDailyNews", "@mike92"]


def _h(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}:{text}".encode(), digest_size=8).digest(), "big")


def capitals(text: str) -> str:
    """Sentence case, 'I' capitalised, and now and then a SHOUTED word."""
    words = text.split(" ")
    words = ["I" if w == "i" else w for w in words]
    if words and len(words) > 3 and _h(text, "shout") % 3 == 0:
        k = _h(text, "which") % len(words)
        words[k] = words[k].upper()
    out = " ".join(words)
    return out[:1].upper() + out[1:]


def punctuation(text: str) -> str:
    """Apostrophes in contractions, a comma or two, and an ending mark."""
    words = [_CONTRACTIONS.get(w, w) for w in text.split(" ")]
    if len(words) > 6:
        words[len(words) // 2] += ","
    return " ".join(words) + _ENDINGS[_h(text, "end") % len(_ENDINGS)]


def emoji(text: str) -> str:
    """One to three emoji at the end, chosen by the text's hash (not its label)."""
    n = 1 + _h(text, "n") % 3
    return text + " " + "".join(_EMOJI[_h(text, f"e{i}") % len(_EMOJI)] for i in range(n))


def links(text: str) -> str:
    """A mention in front or a URL at the end."""
    if _h(text, "link") % 2:
        return f"{_MENTIONS[_h(text, 'm') % len(_MENTIONS)]} {text}"
    return f"{text} {_URLS[_h(text, 'u') % len(_URLS)]}"


def slang(text: str) -> str:
    """Texting shorthand: you -> u, because -> cuz, ..."""
    for long, short in _SLANG.items():
        text = re.sub(rf"\b{long}\b", short, text)
    return text


def mixed(text: str) -> str:
    """All of the above at once."""
    return links(emoji(punctuation(capitals(slang(text)))))


STYLES = {"capitals": capitals, "punctuation": punctuation, "emoji": emoji, "links": links,
          "slang": slang, "mixed": mixed}
