"""A cheap check for texts that are probably not English: the models are trained on English
only, and label other languages with confidence and without meaning ("ärgerlich" -> surprise).

Not a language identifier: a word count, vectorized in pyarrow (about 0.5 us of CPU a row, 3%
of tokenizing: bench/language_check.py), that runs beside tokenizing. A word is foreign evidence
when it is a frequent function word of German, French, Spanish, Italian, Portuguese or Dutch that
English does not share ("und", "estoy", "très"), has a Latin letter outside ASCII ("wütend",
"zły"), or has two letters of another script in a row (Cyrillic, CJK, Arabic, Greek, ...; a lone
"ツ" in a shrug is not). A text looks non-English when it has such a word and more than twice as
many of them as common English words. On the English training sets in shared/data it flags 0 of
16,000 CARER texts, 0 of 12,128 dair-ai extra, 1 of 8,507 EmoContext and 1 of 4,585 GoEmotions
texts; of TEC's 16,478 tweets it flags 128, and those read were Dutch, Italian, Indonesian or
French. Accent-free text in a language it has no words of (Swahili, Tagalog) goes unseen.

The model's own vocabulary cannot tell: the shipped uncased WordPiece strips accents and splits
any Latin or Cyrillic word into known pieces, so almost nothing is [UNK].
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHECKED_CHARS = 1000  # of each text: the model reads ~128 tokens, and a 50 MB line stays cheap

ENGLISH = frozenset("""
i me my mine myself you your yours u ur we us our he him his she her it its they them their the a an and or
but so to of in on at for with from by about as into than then if because is am are was were be been being
have has had do does did don doesn didn isn wasn aren won can could would should will just not no yes this
that these those there here what when where why how who which all some any more most very really too much
many also only even still again ever never always today tonight tomorrow yesterday now feel feeling felt
love like hate happy sad angry scared afraid good bad great best day time people life know think want get
got go going gonna wanna make thing things lol omg lmao haha thank thanks please one out up off over new
well ok okay oh hey yeah im ive dont cant wont man hat war die also amazing awesome nice cool fun funny
sorry miss need right back first last next home work school night morning week year friend friends
cafe café naive naïve resume résumé fiance fiancé fiancée cliché déjà vu pokémon beyoncé über
""".split())

_FOREIGN_WORDS = """
und ich nicht das ist der den dem des sie wir ihr ein eine einen einem einer mit auf für sehr aber doch
wie noch heute bist sind mich mir dich dir uns euch nur schon auch wenn weil dass oder zu vom zum zur beim
nach über kein keine nichts immer jetzt hier habe hab hast haben wird werden wurde bin danke liebe gerade
wirklich etwas alles mein meine dein deine sein seine ja
je tu il elle nous vous ils elles les des une est pas suis très avec pour mais qui que quoi et du au aux
ma mes ton ta tes sa ses ce cette ces dans sur sont être avoir fait ne bien merci oui trop vraiment
toujours aujourd hui parce comme leur peu tout tous rien moi toi lui été où demain hier maintenant encore
jamais beaucoup
el los las una unos es está estoy estás muy pero qué por para con sin mi yo lo le hoy también porque
cuando como más todo nada eso esta este esto ser estar tengo tiene hay soy eres siempre nunca la en se te
mañana ayer ahora bueno
sono che molto della dello questo questa perché anche ti io gli nel sei oggi grazie bene cosa tutto
não eu muito você voce estou obrigado isso isto ele ela nao meu minha hoje mais mas são tão ao
ik het niet een zijn heel maar jij mijn ook nog wel zo vandaag erg echt voor met niks geen
"""
# Left out: "de", "del" ("de-stress", "Lana Del Rey") and "mon" ("c'mon" splits into "c" and "mon").
FOREIGN = frozenset(_FOREIGN_WORDS.split()) - ENGLISH  # a word both languages use is no evidence

# A Latin letter outside ASCII, or two letters in a row of another script.
_NOT_ENGLISH_LETTERS = r"[^\x00-\x7f\P{Latin}]|[^\P{L}\p{Latin}]{2}"
_ANY_EVIDENCE = f"{_NOT_ENGLISH_LETTERS}|(?i:(?:^|\\PL)(?:{'|'.join(sorted(FOREIGN))})(?:\\PL|$))"
_FOREIGN_SET = pa.array(sorted(FOREIGN), pa.string())
_ENGLISH_SET = pa.array(sorted(ENGLISH), pa.string())


def looks_non_english(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: True where a text looks like another language than English (see the module
    docstring); null, empty and non-text values are False."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    n = len(texts)
    out = np.zeros(n, bool)
    if n == 0 or not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
                      or pa.types.is_string_view(texts.type)):
        return out
    if pa.types.is_string_view(texts.type):
        texts = texts.cast(pa.string())
    head = pc.utf8_slice_codeunits(texts, 0, CHECKED_CHARS)
    # One regex pass finds the few texts with any evidence at all; only those are split into words.
    maybe = pc.fill_null(pc.match_substring_regex(head, _ANY_EVIDENCE), False).to_numpy(zero_copy_only=False)
    where = np.flatnonzero(maybe)
    if len(where):
        words = pc.split_pattern_regex(pc.utf8_lower(head.take(pa.array(where))), r"[^\pL]+")
        flat, rows = pc.list_flatten(words), pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
        foreign = pc.or_(pc.is_in(flat, value_set=_FOREIGN_SET.cast(flat.type)),
                         pc.match_substring_regex(flat, _NOT_ENGLISH_LETTERS))
        english = pc.is_in(flat, value_set=_ENGLISH_SET.cast(flat.type))
        fx = np.bincount(rows[foreign.to_numpy(zero_copy_only=False)], minlength=len(where))
        en = np.bincount(rows[english.to_numpy(zero_copy_only=False)], minlength=len(where))
        out[where] = (fx >= 1) & (fx > 2 * en)
    return out


def count_non_english(texts: pa.Array | pa.ChunkedArray) -> int:
    """How many of `texts` look non-English."""
    return int(looks_non_english(texts).sum())
