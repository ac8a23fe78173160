"""Model and training configuration: dataclasses saved as JSON beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emolabel import formats
from emolabel.errors import ModelError

# The CARER / dair-ai "emotion" label order (ids 0-5 in the dataset files).
EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]

CONFIG_NAME = "emolabel.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1
# The formats of labelled tables (finetune, eval, check-bf16): those both read and written, from
# the one record per format (formats.py; tag's choices are formats.readable() and writable())
FORMATS = formats.tables()
ENGINES = ("local", "ray")  # emolabel.engines.make
# The codec inside a Parquet output (outputs.WriteOptions); zstd: smaller than snappy at about its speed
PARQUET_COMPRESSIONS = ("zstd", "snappy", "none")
PARQUET_COMPRESSION = PARQUET_COMPRESSIONS[0]  # the default, what every Parquet output was written with before
# Text normalization schemes (implemented in normalize.py; named here so the CLI needs no pyarrow)
NORMALIZATIONS = ("none", "social-v1", "social-v2")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # inference.resolve_precision says what auto is
# finetune's autocast (train.train_amp_dtype says what auto is); weights and optimizer stay fp32
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
SAVE_DTYPES = ("fp32", "fp16", "bf16")  # finetune's storage precision of the saved weights (fp16 halves the size)
POOLINGS = ("cls", "mean")  # "cls": the [CLS] vector, as BERT was pre-trained for; "mean": masked mean
ACTIVATIONS = ("gelu", "relu")  # of the head's dense layers
# How finetune picks the best epoch over several validation tables (stated in training.json)
OBJECTIVES = {
    "mean-macro-f1": "mean over the validation tables of their macro-F1, each table counting once",
    "first-macro-f1": "macro-F1 of the first validation table; the others are reported only",
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild an encoder + head without the network."""

    labels: list[str] = field(default_factory=lambda: list(EMOTIONS))  # id -> name
    encoder: dict[str, Any] = field(default_factory=dict)  # the transformers config of the encoder
    base: str = ""  # where the encoder weights came from (a folder or a hub id), for provenance
    pooling: str = "cls"  # "cls": the [CLS] vector, as BERT was pre-trained for; "mean": masked mean
    head_hidden: list[int] = field(default_factory=lambda: [256])  # dense layers before the output
    dropout: float = 0.1  # before every dense layer of the head, as in BERT's own classifier
    activation: str = "gelu"  # "gelu" or "relu"
    max_length: int = 128  # tokens, [CLS] and [SEP] included; the emotion texts need < 90
    pad_token_id: int = 0
    # text rewrite applied in finetune, eval and tag alike (normalize.SCHEMES); every saved
    # emolabel.json names its own, so older models keep social-v1
    normalization: str = "social-v2"
    temperature: float = 1.0  # softmax temperature fitted on the validation split (calibration)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        """Refuse a field of the wrong type or range here, not as a TypeError deep in inference."""
        import math

        def whole(x: object) -> bool:  # JSON true/false are ints to Python, and 1.5 or "128" are not counts
            return isinstance(x, int) and not isinstance(x, bool)

        if not isinstance(self.labels, list) or not all(isinstance(x, str) and x for x in self.labels):
            raise ModelError(f"labels must be a list of names, not {self.labels!r}")
        if not isinstance(self.encoder, dict) or not all(isinstance(k, str) for k in self.encoder):
            raise ModelError(f"encoder must be an object (the transformers config of the encoder), "
                             f"not {self.encoder!r}")
        vocab = self.encoder.get("vocab_size")
        if vocab is not None and not (whole(vocab) and vocab > 0):
            raise ModelError(f"encoder.vocab_size must be a positive whole number (rows of the embedding "
                             f"table), not {vocab!r}")
        if not isinstance(self.base, str):
            raise ModelError(f"base must be a string (where the encoder came from), not {self.base!r}")
        if self.pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if not isinstance(self.head_hidden, list) or not all(whole(h) and h > 0 for h in self.head_hidden):
            raise ModelError(f"head_hidden must be a list of positive whole numbers (widths of the head's "
                             f"dense layers) such as [256], not {self.head_hidden!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
            raise ModelError(f"dropout must be a number from 0 up to (not including) 1 such as 0.1, not {d!r}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        if not (whole(self.max_length) and self.max_length >= 2):
            raise ModelError(f"max_length must be a whole number of tokens, at least 2 ([CLS] and [SEP]), "
                             f"such as 128, not {self.max_length!r}")
        if not (whole(self.pad_token_id) and self.pad_token_id >= 0):
            raise ModelError(f"pad_token_id must be a token id (a whole number, 0 or more), not {self.pad_token_id!r}")
        if vocab is not None and self.pad_token_id >= vocab:
            raise ModelError(f"pad_token_id {self.pad_token_id} is outside the embedding table "
                             f"(encoder.vocab_size {vocab}): it must be below {vocab}")
        if self.normalization not in NORMALIZATIONS:
            raise ModelError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ModelError(f"temperature must be a positive number, not {t!r} (0 or less makes every label "
                             "null or inverts the ranking).")
        if not (whole(self.format_version) and self.format_version >= 1):
            raise ModelError(f"format_version must be a whole number such as {FORMAT_VERSION}, "
                             f"not {self.format_version!r}")
        reserved = {"score"}  # tag adds EMOTION_score: a label of that name would clash with it
        if reserved & set(self.labels):
            raise ModelError(f"a label cannot be named {sorted(reserved & set(self.labels))[0]!r} "
                             "(tag adds a column of that name).")
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ModelError(f"labels must be at least two distinct names, got {self.labels}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def save(self, folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(self.to_json())

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        path = folder / CONFIG_NAME
        if not folder.is_dir():
            raise ModelError(f"Model folder {folder} does not exist.")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(
                f"{folder} is not an emolabel model folder: {CONFIG_NAME} is missing. "
                "Train one with 'emolabel finetune' or give `model` a model folder."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path} is not valid JSON ({e}).") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path} must hold a JSON object of model settings, not {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"{path} has unknown keys {sorted(unknown)}: written by a newer emolabel?")
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise ModelError(f"{path} has format_version {version}; upgrade emolabel.")
        try:
            return cls(**data)
        except ModelError as e:  # the checks name the field; the file is named here, where it is known
            raise ModelError(f"{path}: {str(e).rstrip('.')}. Correct it in that file.") from None


@dataclass
class TrainConfig:
    """Hyperparameters of `emolabel finetune`; each default says why it was chosen."""

    epochs: int = 8  # the emotion data keeps improving to ~6-8 epochs; early stopping ends sooner
    batch_size: int = 32  # small batches generalise better on 16k rows; length-grouped so still fast
    lr: float = 8e-5  # small encoders (MiniLM) want a higher rate than bert-base's 2e-5..5e-5
    head_lr: float = 1e-3  # the head starts from random weights: let it move faster
    layer_decay: float = 0.9  # layer-wise LR decay: lower layers hold general language, change less
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of steps with linear warm-up, then linear decay to zero
    label_smoothing: float = 0.0  # the labels are distant-supervised and noisy; try 0.05-0.1
    max_grad_norm: float = 1.0
    patience: int = 3  # epochs without a better validation macro-F1 before stopping
    seed: int = 13
    freeze_encoder: bool = False  # True: train only the head on frozen features
    distill_alpha: float = 0.5  # with --teacher: weight of the teacher's soft labels vs the hard labels
    distill_temperature: float = 2.0  # softens teacher and student alike (Hinton et al. 2015)
    # autocast of the training steps: "auto" is bf16 on a GPU and on a CPU with bf16 units (AVX512-BF16,
    # AMX: 2-2.6x fp32 there, the same validation macro-F1, bench/train_precision.py), else fp32.
    # Validation and calibration run in the inference precision whatever this says.
    precision: str = "auto"


DEFAULT_MODEL_NAME = "emotion-minilm"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, e.g. not on macOS)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_model_dir() -> Path:
    """The shipped model: $EMOLABEL_MODEL, else the copy installed with the package, else the
    checkout's weights/ folder (an editable install)."""
    import os

    env = os.environ.get("EMOLABEL_MODEL")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights" / DEFAULT_MODEL_NAME, here.parent / "weights" / DEFAULT_MODEL_NAME):
        if (candidate / CONFIG_NAME).exists():
            return candidate
    raise ModelError(
        f"The default model {DEFAULT_MODEL_NAME} is not installed (looked in {here / 'weights'} and "
        f"{here.parent / 'weights'}). Give `model` a model folder, or set EMOLABEL_MODEL."
    )
