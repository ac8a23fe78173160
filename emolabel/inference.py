"""Labeler: texts in, probabilities out, with length-sorted dynamic batches and order restored.

Work is split in two so the pipeline can overlap them: `prepare()` (normalize, tokenize,
plan and pad batches: numpy only, safe in a background thread; the Rust tokenizer releases
the GIL) and `run()` (the model, on the calling thread).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from emolabel import batching, classifier
from emolabel import model as model_lib
from emolabel.config import PRECISIONS, TOKENIZER_NAME, available_cpus
from emolabel.errors import OptionError
from emolabel.invariant import InvariantForward, cpu_has_bf16, supports
from emolabel.labels import label_columns, probabilities
from emolabel.normalize import bert_uncased_ready, normalize


def resolve_device(device: str) -> torch.device:
    """'auto' is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptionError(f"Unknown `device` {device!r}: use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"`device` {device}: no CUDA GPU is visible to torch here. Use `device` cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"`device` {device}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif dev.type != "cpu":
        raise OptionError(f"Unknown `device` {device!r}: use auto, cpu, cuda or cuda:N.")
    return dev


def int8_available() -> bool:
    """Dynamic int8 matmuls need the fbgemm (x86) or qnnpack (Arm) engine in this torch build."""
    return bool({"fbgemm", "x86", "qnnpack"} & set(torch.backends.quantized.supported_engines))


# How each precision runs a lean BERT encoder on the CPU: "invariant" is emolabel.invariant's
# fixed-shape forward (a row's logits bit-identical whatever its batch: issue 21), "batched" the
# model's own forward on padded batches. fp32 and bf16 run invariant: "same text, same label" to the
# bit, for 6-8% of fp32's model step (bench/cpu_precisions.py, fp32 against fp32-batched). bf16 there
# means bf16 matrix products and fp32 everything else. int8 has its own layers (and moves by batch).
CPU_FORWARD = {"fp32": "invariant", "bf16": "invariant", "int8": "batched"}
MATMUL_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device, model_dir: Path | None = None) -> tuple[str, str]:
    """(precision, why) for `precision` on `device`. 'auto' is bf16 on a GPU that has it (fp16
    otherwise). On the CPU it is bf16 (bf16 matrix products in the batch-invariant forward) where
    the CPU has bf16 units and `model_dir` records a passing bf16 check on the weights it holds
    (precision_check: accuracy and labels as fp32's on each validation table), fp32 otherwise.

    Why not int8 on the CPU, although it was 1.6-2x faster than fp32: dynamic quantization scales
    the activations by the largest value in the whole batch tensor, so a row's probabilities (and
    on the shipped model 1% of its labels) depended on the rows batched with it, and the invariant
    bf16 path is faster still. `--precision int8` stays available where that trade is wanted.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"Unknown `precision` {precision!r}: use {', '.join(PRECISIONS)}.")
    if precision == "int8" and device.type != "cpu":
        raise OptionError("`precision` int8 is a CPU path; on a GPU use bf16 or fp16.")
    if precision == "int8" and not int8_available():
        raise OptionError("`precision` int8 needs the fbgemm or qnnpack engine, which this torch build lacks; "
                          "use fp32.")
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cuda":
        return ("bf16", "auto: the GPU has bf16") if torch.cuda.is_bf16_supported() else ("fp16", "auto: no bf16 on this GPU")
    from emolabel import precision_check

    if not cpu_has_bf16():
        return "fp32", "auto: this CPU has no bf16 units"
    if model_dir is None or not precision_check.passed(model_dir):
        return "fp32", "auto: no passing `emolabel check-bf16` record for these weights"
    return "bf16", "auto: these weights passed `emolabel check-bf16`"


def load_tokenizer(folder: Path, max_length: int, tokenizer=None):  # -> tokenizers.Tokenizer
    """The model folder's fast tokenizer (or `tokenizer`, read from it already), truncating to
    `max_length` tokens, never padding."""
    # The Rust tokenizer tokenizes a batch on one thread unless told otherwise (measured here: 23k
    # rows/s on one core, 50k on two); use every core this process may run on. Set when a tokenizer
    # is first loaded (before its thread pool starts), not at import; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("RAYON_NUM_THREADS", str(available_cpus()))
    tok = tokenizer or model_lib.read_tokenizer(folder / TOKENIZER_NAME)
    tok.no_padding()  # padding is per batch, to the batch's own longest row
    tok.enable_truncation(max_length)
    return tok


def release_free_memory() -> None:
    """Hand memory that was freed back to the system (glibc's malloc_trim; elsewhere nothing).

    glibc keeps freed blocks in its arenas for reuse; with batches of ever-changing shapes (each
    padded to its own longest row) the kept blocks fragment and resident memory crept up with the
    rows labelled: 595 -> 770 MB over 14,000 rows with the shipped model, against a flat 450 MB
    with a trim after each chunk (a few milliseconds)."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
HUGE = 1 << 20  # characters: past this a text is only ever tokenized in part (see TextEncoder.encode)


class TextEncoder:
    """Normalization + tokenization, the same in finetune, eval and tag.

    For uncased BERT tokenizers after social-v1/v2 normalization, the tokenizer's own normalizer and
    pre-tokenizer are replaced by equivalent vectorised steps (normalize.bert_uncased_ready) and a
    plain whitespace split: the same token ids, 2.4x faster.
    """

    def __init__(self, folder: Path, max_length: int, scheme: str, fast: bool = True, tokenizer=None):
        import json

        from tokenizers import pre_tokenizers

        self.scheme = scheme
        self.max_length = max_length
        self.tokenizer = load_tokenizer(folder, max_length, tokenizer)
        spec = json.loads(self.tokenizer.to_str())
        norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
        self.fast = fast and scheme in ("social-v1", "social-v2") and norm.get("type") == "BertNormalizer" and bool(
            norm.get("lowercase")) and norm.get("strip_accents") in (None, True) and pre.get("type") == "BertPreTokenizer"
        if self.fast:
            self.tokenizer.normalizer = None
            self.tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()

    def normalize(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        t = normalize(texts, self.scheme)
        return bert_uncased_ready(t) if self.fast else t

    def encode(self, texts: list[str]) -> list:  # -> list[tokenizers.Encoding]
        """Tokenize already-normalized texts."""
        if not texts:
            return []
        # A text far longer than max_length tokens is cut at a space before tokenizing (a 50 MB line
        # took 7 GB): tokens never span whitespace, so when the cut text still overflows max_length,
        # its kept tokens are exactly the whole text's. Otherwise (mostly spaces) the whole text is
        # tokenized, up to HUGE characters.
        cap = max(8192, 64 * self.max_length)
        long = [i for i, t in enumerate(texts) if len(t) > cap]
        if not long:
            return self.tokenizer.encode_batch_fast(texts)
        cut = list(texts)
        for i in long:
            head = texts[i][:cap]
            space = max(head.rfind(c) for c in " \t\n\r")
            cut[i] = head[:space] if space > 0 else head
        encs = self.tokenizer.encode_batch_fast(cut)
        for i in long:
            if not encs[i].overflowing and len(texts[i]) <= HUGE:
                encs[i] = self.tokenizer.encode(texts[i])
        return encs


def text_array(texts: object, where: Callable[[int], str] = lambda i: f"texts[{i}]",
               from_pandas: bool = False) -> pa.Array:
    """Texts (str, or None for no text) as an Arrow string array. An item of another type is a
    TypeError naming it (`where`: its place, from its position), and a str that is not text (lone
    surrogates: bytes decoded with errors="surrogateescape") or bytes that are not UTF-8 an
    InputError. `from_pandas`: NaN is no text too, as pandas has it."""
    from emolabel.errors import InputError

    if isinstance(texts, str | bytes) or not hasattr(texts, "__iter__"):
        raise TypeError(f"Give a list of texts, not {type(texts).__name__}; for one text: labeler.predict([text])[0]")
    if not hasattr(texts, "__len__"):  # a generator: read once, here, so a bad item can still be named
        texts = list(texts)
    try:
        return pa.array(texts, type=pa.string(), from_pandas=from_pandas)
    except (pa.ArrowTypeError, pa.ArrowInvalid, UnicodeEncodeError):
        pass
    for i, text in enumerate(texts):  # the first item that failed, named
        if isinstance(text, str):
            bad = next((j for j, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
            if bad is not None:
                raise InputError(f"{where(i)} is not text: {text[:40]!r} holds {text[bad]!r} at position {bad}, a "
                                 "lone surrogate, what bytes that are not UTF-8 become when decoded with "
                                 'errors="surrogateescape". Decode the bytes with their real encoding.') from None
        elif isinstance(text, bytes):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{where(i)} holds bytes that are not UTF-8 text ({e.reason} at byte "
                                 f"{e.start}): decode them with their real encoding.") from None
        elif text is not None and not (from_pandas and isinstance(text, float) and text != text):
            raise TypeError(f"{where(i)} is {type(text).__name__} {text!r}, not a str (or None for no text): "
                            "convert the texts to str first.")
    return pa.array(texts, type=pa.string(), from_pandas=from_pandas)  # not reached: an item above failed


@dataclass
class Prepared:
    """A chunk of texts ready for the model: padded batches in length order."""

    n: int  # rows in the chunk, texts or not
    rows: np.ndarray  # (n_valid,) chunk row of each model input, in batch order
    batches: list[tuple[np.ndarray, np.ndarray]]  # (ids, mask), each (batch, its own max length)
    cut: np.ndarray  # (n_truncated,) chunk rows whose text was cut at max_length

    @property
    def truncated(self) -> int:
        return len(self.cut)

    @property
    def empty(self) -> int:
        return self.n - len(self.rows)


class Labeler:
    """A loaded model and its tokenizer, set up for one device and precision."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_length: int | None = None,
        threads: int | None = None,
    ):
        from emolabel.options import TagOptions, batch_defaults  # the one check of the options tag_file shares

        device = str(device) if isinstance(device, torch.device) else device
        TagOptions.checked(model=model_dir, device=device, precision=precision, batch_size=batch_size,
                           max_tokens=max_tokens, max_length=max_length, threads=threads)
        self.device = resolve_device(device)
        self.model_dir = Path(model_dir)
        self.precision, self.precision_reason = resolve_precision(precision, self.device, self.model_dir)
        if threads:
            torch.set_num_threads(threads)
        # emolabel's own folder or a transformers classifier: the same Settings and forward either way
        self.config, self.model = classifier.load(self.model_dir)
        self.labels = list(self.config.labels)
        self.multi_label = self.config.multi_label  # a sigmoid per label (labels.probabilities)
        self.max_length = min(max_length or self.config.max_length, self.config.max_positions)
        self.encoder = TextEncoder(self.model_dir, self.max_length, self.config.normalization,
                                   tokenizer=self.config.tokenizer)
        # Rows per batch and padded tokens per batch: options.batch_defaults says why, for both engines.
        defaults = batch_defaults(self.device.type)
        self.batch_size = batch_size or defaults["batch_size"]
        self.max_tokens = max_tokens or defaults["max_tokens"]
        if self.batch_size < 1 or self.max_tokens < self.max_length:
            raise OptionError(
                f"`max_tokens` ({self.max_tokens}) must be at least `max_length` ({self.max_length}), "
                "and `batch_size` at least 1."
            )
        self._setup_model()

    def _setup_model(self) -> None:
        m = self.model
        if self.precision == "int8":
            import warnings

            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():  # torch points to torchao for the future; this API is what 2.x has
                warnings.simplefilter("ignore")
                m = quantize_dynamic(m, {torch.nn.Linear: per_channel_dynamic_qconfig})
        # The batch-invariant forward where CPU_FORWARD says so; a transformers encoder (not plain BERT)
        # runs batched whatever the precision. The invariant forward keeps the fp32 weights and casts
        # the matrix products' own (MATMUL_DTYPE) once.
        self.invariant = (self.device.type == "cpu" and CPU_FORWARD.get(self.precision) == "invariant"
                          and supports(m))
        if self.precision in ("bf16", "fp16") and not self.invariant:
            m = m.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        self.model = m.to(self.device).eval()
        self.forward = (InvariantForward(self.model, MATMUL_DTYPE[self.precision]) if self.invariant
                        else (lambda ids, mask: self.model(ids, mask)[0]))

    # -- CPU side: safe to run in a background thread --------------------------------------

    def prepare(self, texts: pa.Array | pa.ChunkedArray) -> Prepared:
        """Normalize and tokenize a chunk (an Arrow array, or a list of texts); plan token-budget
        batches over length-sorted rows."""
        if not isinstance(texts, pa.Array | pa.ChunkedArray):
            texts = text_array(texts)
        if pa.types.is_nested(texts.type):
            raise TypeError(f"prepare() takes texts, not {texts.type} values.")
        if not pa.types.is_string(texts.type) and not pa.types.is_large_string(texts.type):
            texts = pc.cast(texts, pa.string())  # numbers in a text column are read as their text
        norm = self.encoder.normalize(texts)
        keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(norm)), 0), False)
        keep_np = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
        valid = np.flatnonzero(keep_np)
        strs = pc.filter(norm, keep).to_pylist()
        encs = self.encoder.encode(strs)
        cut = valid[np.fromiter((bool(e.overflowing) for e in encs), dtype=bool, count=len(encs))]
        tokens = batching.Tokens.from_ids([e.ids for e in encs])
        order = np.argsort(tokens.lengths, kind="stable")
        plan = batching.plan(tokens.lengths[order], self.batch_size, self.max_tokens)
        batches = [batching.pad(tokens, order[sel], self.config.pad_token_id) for sel in plan]
        return Prepared(len(texts), valid[order], batches, cut)

    # -- model side -------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, prepared: Prepared) -> np.ndarray:
        """(n_valid, labels) float32 logits, in `prepared.rows` order."""
        outs = []
        gpu = self.device.type == "cuda"
        for ids, mask in prepared.batches:
            t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
            if gpu:  # pinned host memory lets the copy overlap the previous batch's kernels
                t_ids = t_ids.pin_memory().to(self.device, non_blocking=True)
                t_mask = t_mask.pin_memory().to(self.device, non_blocking=True)
            outs.append(self.forward(t_ids, t_mask).float())
        if not outs:
            return np.zeros((0, len(self.labels)), np.float32)
        return torch.cat(outs).cpu().numpy()  # one device sync per chunk

    def run(self, prepared: Prepared, on_rows: Callable[[int], None] | None = None,
            step: int = 8) -> np.ndarray:
        """(n, labels) probabilities in chunk order; rows with no text are NaN. With `on_rows`, the
        batches run `step` at a time and it is told the rows done after each group (eval's
        progress): the same batches, the same numbers."""
        probs = np.full((prepared.n, len(self.labels)), np.nan, dtype=np.float32)
        step = step if on_rows else max(1, len(prepared.batches))  # one device sync per chunk otherwise
        done = 0
        for i in range(0, len(prepared.batches), step):
            batches = prepared.batches[i : i + step]
            rows = prepared.rows[done : done + sum(len(ids) for ids, _ in batches)]
            part = dataclasses.replace(prepared, rows=rows, batches=batches)
            probs[rows] = probabilities(self.logits(part), self.config.temperature, self.multi_label)
            done += len(rows)
            if on_rows:
                on_rows(len(rows))
        if on_rows and prepared.n > done:  # rows without text are scored too (NaN)
            on_rows(prepared.n - done)
        return probs

    def predict_proba(self, texts: list[str | None]) -> np.ndarray:
        """Probabilities for a list of texts: (len(texts), labels), NaN rows where there is no text."""
        return self.run(self.prepare(text_array(texts)))  # text_array: a str is refused, not read as characters

    def predict(self, texts: list[str | None], min_score: float | None = None) -> list[str | None]:
        """The most likely label of each text: None where there is no text, and with `min_score`
        where the top probability is below it (predict_proba tells the two apart: NaN for no text).
        A multi-label model: every label scoring at least `min_score` (default 0.5), joined by "|"."""
        from emolabel.options import TagOptions

        TagOptions.checked(min_score=min_score)
        probs = self.predict_proba(texts)
        return label_columns(probs, self.labels, "label", min_score, self.multi_label)["label"].to_pylist()

