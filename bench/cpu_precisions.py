"""Which CPU arithmetic can be the default: speed, accuracy and "same text, same label", in one run.

For each way of running the shipped model on the CPU, on the emotion validation split (2,000
rows, labelled): rows/s of the model step (normalize, tokenize, batch, forward; reading and
writing excluded) and its ratio to fp32 measured in the same run, accuracy, and how far a row's
probabilities move when its neighbours change: the rows shuffled, reversed, shuffled at
--batch-size 8, cut into chunks of 300, and 200 rows labelled one at a time (largest |difference|
and labels changed, against the same precision's own first run).

    python bench/cpu_precisions.py                                  # all modes, ~5 minutes on 2 cores
    python bench/cpu_precisions.py --modes fp32,int8-token --repeats 3
    python bench/cpu_precisions.py --modes fp32-batched,fp32,bf16,bf16@128,bf16@512,fp32@128

Modes: fp32 (the default where no bf16 check passed: the batch-invariant forward of
emolabel/invariant.py in fp32); fp32-batched (the model's own forward on padded batches: the CPU
default before issue 21, "today's fp32", the baseline the speed ratios are taken against when it
is measured); bf16 (`--precision bf16`, and auto's choice for a model that passed check-bf16: the
invariant forward with bf16 matrix products, fp32 between them); bf16-batched (the whole model
cast to bf16 on padded batches, what `--precision bf16` was before issue 21: its rows move with
the batch); int8 (torch's dynamic quantization, one activation scale per batch tensor:
`--precision int8`); and ones emolabel does not offer, measured to decide: int8-token (an
activation scale per token, so the integer matrix products are exact and shape-independent,
dequantized in fp32: if it is not faster than bf16 batched, an invariant int8 is not either) and
bf16-matmul (bf16 matrix products on padded batches, everything else fp32); onnxruntime (the model
exported to ONNX, fp32, run by ONNX Runtime; only where `onnxruntime` and `onnx` are installed).
An invariant mode takes the rows per kernel call after an @ (bf16@128: tiles of 128 token rows;
emolabel uses invariant.TILE), to find the tile that keeps the speed.

Invariance: each mode's probabilities against its own first run with the rows shuffled,
reversed, shuffled at --batch-size 1 and 8, cut into chunks of 300, on 1 thread instead of all,
and 200 rows labelled one at a time (largest |difference| and labels changed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from emolabel import bert  # noqa: E402
from emolabel.config import default_model_dir  # noqa: E402
from emolabel.inference import Labeler  # noqa: E402
from emolabel.invariant import InvariantForward  # noqa: E402
from emolabel.labels import softmax  # noqa: E402

MODES = ["fp32-batched", "fp32", "bf16", "bf16-batched", "int8", "int8-token", "bf16-matmul", "onnxruntime"]


# -- the two arithmetics emolabel does not offer --------------------------------------------------

def _int8_pack(w: torch.Tensor, b: torch.Tensor):
    """Weights per output channel: int8 (K, N) and their scales; the bias stays fp32."""
    w = w.detach().float()
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous(), scale, b.detach().float()


def _int8_token_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """x @ W.T + b with x quantized per token (row): integer sums are exact, so a row's result
    does not depend on the other rows of the matrix, whatever the kernel's blocking."""
    wq, w_scale, bias = packed
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    x_scale = torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12) / 127
    xq = torch.round(x2 * (1 / x_scale)).to(torch.int8)
    y = torch._int_mm(xq, wq).float() if x2.shape[0] > 16 else xq.float() @ wq.float()  # _int_mm wants M > 16
    return torch.addcmul(bias, y, x_scale * w_scale).reshape(*shape[:-1], -1)


def _bf16_pack(w: torch.Tensor, b: torch.Tensor):
    return w.detach().to(torch.bfloat16), b.detach().float()


def _bf16_linear(x: torch.Tensor, packed) -> torch.Tensor:
    w, bias = packed
    return F.linear(x.to(torch.bfloat16), w).float() + bias


def _layer_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """bert._Layer.forward with every matrix product through self._linear."""
    b, t, h = x.shape
    qkv = self._linear(x, self._packed["qkv"]).view(b, t, 3, self.heads, h // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, h)
    o = self.attention.output
    x = o.LayerNorm(x + self._linear(ctx, self._packed["o"]))
    y = self._linear(self.act(self._linear(x, self._packed["i"])), self._packed["out"])
    return self.output.LayerNorm(x + y)


def patch_layers(labeler: Labeler, pack, linear) -> None:
    for layer in labeler.model.encoder.encoder.layer:
        s = layer.attention.self
        layer._packed = {
            "qkv": pack(torch.cat([s.query.weight, s.key.weight, s.value.weight]),
                        torch.cat([s.query.bias, s.key.bias, s.value.bias])),
            "o": pack(layer.attention.output.dense.weight, layer.attention.output.dense.bias),
            "i": pack(layer.intermediate.dense.weight, layer.intermediate.dense.bias),
            "out": pack(layer.output.dense.weight, layer.output.dense.bias),
        }
        layer._linear = linear
        layer.forward = types.MethodType(_layer_forward, layer)


class OnnxLabeler:
    """The labeler's prepare() and batches, the model step run by ONNX Runtime."""

    def __init__(self, labeler: Labeler, folder: Path):
        import onnxruntime as ort

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, mask):
                return self.m(ids, mask)[0]

        ids = torch.ones(2, 8, dtype=torch.long)
        path = folder / "model.onnx"
        axes = {"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}, "logits": {0: "b"}}
        torch.onnx.export(Logits(labeler.model), (ids, ids), str(path), input_names=["ids", "mask"],
                          output_names=["logits"], dynamic_axes=axes, dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.labeler = labeler

    def __getattr__(self, name):
        return getattr(self.labeler, name)

    def run(self, prepared) -> np.ndarray:
        probs = np.full((prepared.n, len(self.labeler.labels)), np.nan, dtype=np.float32)
        if prepared.batches:
            logits = np.concatenate([self.session.run(None, {"ids": i, "mask": m})[0] for i, m in prepared.batches])
            probs[prepared.rows] = softmax(logits, self.labeler.config.temperature)
        return probs


def make(mode: str, model: Path, tmp: Path):
    name, _, tile = mode.partition("@")
    if name in ("fp32", "bf16", "int8", "fp32-batched", "bf16-batched"):
        lab = Labeler(model, device="cpu", precision=name.split("-")[0])
        if name.endswith("-batched"):  # the model's own forward, as the CPU ran before issue 21
            model_ = lab.model.to(torch.bfloat16) if name == "bf16-batched" else lab.model
            lab.forward = lambda ids, mask: model_(ids, mask)[0]
        elif tile:
            lab.forward = InvariantForward(lab.model, lab.forward.matmul_dtype, int(tile))
        return lab
    lab = Labeler(model, device="cpu", precision="fp32")
    if mode == "onnxruntime":
        return OnnxLabeler(lab, tmp)
    if not isinstance(lab.model.encoder, bert.LeanBert):
        raise SystemExit(f"{mode} is measured on plain BERT encoders only")
    if mode == "int8-token":
        patch_layers(lab, _int8_pack, _int8_token_linear)
    else:
        patch_layers(lab, _bf16_pack, _bf16_linear)
    lab.forward = lambda ids, mask: lab.model(ids, mask)[0]  # the patched layers run in the model's own forward
    return lab


def label(lab, texts: list[str], batch_size: int | None = None, chunk: int | None = None) -> np.ndarray:
    """Probabilities of `texts`, prepared `chunk` rows at a time, at this batch size."""
    owner = lab.labeler if isinstance(lab, OnnxLabeler) else lab
    keep = owner.batch_size
    owner.batch_size = batch_size or keep
    try:
        step = chunk or len(texts)
        return np.concatenate([lab.run(lab.prepare(pa.array(texts[i : i + step], pa.string())))
                               for i in range(0, len(texts), step)])
    finally:
        owner.batch_size = keep


def measure(mode: str, model: Path, texts: list[str], gold: np.ndarray, repeats: int, tmp: Path) -> dict:
    lab = make(mode, model, tmp)
    label(lab, texts[:256])  # warm-up: first calls allocate and pick kernels
    times, probs = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        probs = label(lab, texts)
        times.append(time.perf_counter() - t)
    perm = np.random.default_rng(0).permutation(len(texts))
    back = np.argsort(perm)
    shuffled = [texts[i] for i in perm]
    others = {
        "shuffled": label(lab, shuffled)[back],
        "reversed": label(lab, texts[::-1])[::-1],
        "shuffled_batch_1": label(lab, shuffled, batch_size=1)[back],
        "shuffled_batch_8": label(lab, shuffled, batch_size=8)[back],
        "chunks_of_300": label(lab, texts, chunk=300),
        "one_at_a_time": label(lab, texts[:200], chunk=1),
    }
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            others["one_thread"] = label(lab, shuffled)[back]
        finally:
            torch.set_num_threads(threads)
    moved = {}
    for name, p in others.items():
        ref = probs[: len(p)]
        moved[name] = {"max_prob_diff": float(np.abs(p - ref).max()),
                       "labels_changed": int((p.argmax(1) != ref.argmax(1)).sum())}
    return {"mode": mode, "seconds": sorted(times)[len(times) // 2], "rows": len(texts),
            "accuracy": float((probs.argmax(1) == gold).mean()), "moved": moved, "probs": probs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model folder [the shipped model]")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "emotion" / "validation.csv")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each mode; the median is reported")
    ap.add_argument("--rows", type=int, default=None, help="the first ROWS rows only (a smoke run) [all]")
    args = ap.parse_args()
    import tempfile

    model = args.model or default_model_dir()
    with open(args.data, newline="") as f:
        rows = list(csv.DictReader(f))[: args.rows]
    texts = [r["text"] for r in rows]
    gold = np.array([int(r["label"]) for r in rows])
    tmp = Path(tempfile.mkdtemp(prefix="emolabel-precisions-"))
    results = []
    for mode in args.modes.split(","):
        if mode == "onnxruntime":
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
            except ImportError:
                print(json.dumps({"mode": mode, "skipped": "pip install onnxruntime onnx to measure it"}))
                continue
        r = measure(mode, model, texts, gold, args.repeats, tmp)
        results.append(r)
    base = next((r for r in results if r["mode"] == "fp32-batched"), None)  # today's fp32, where measured
    base = base or next((r for r in results if r["mode"] == "fp32"), None)
    for r in results:
        out = {k: v for k, v in r.items() if k != "probs"}
        out["rows_per_s"] = round(r["rows"] / r["seconds"])
        if base is not None:
            out["speed_vs_" + base["mode"]] = round(base["seconds"] / r["seconds"], 2)
            out["vs_" + base["mode"]] = {"max_prob_diff": float(np.abs(r["probs"] - base["probs"]).max()),
                              "labels_differ": int((r["probs"].argmax(1) != base["probs"].argmax(1)).sum())}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
