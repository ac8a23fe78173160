"""A batch-invariant CPU forward pass of the lean BERT encoder and head: a row's logits are bit for
bit the same whatever rows share its batch, their order, the batch size or the thread count.

Why (issue 21): a matrix product's kernel picks its blocking, and so the order in which it sums,
from the shape of the whole matrix and the threads it has. On an AMX CPU a bf16 product with
K=1536 (the FFN down projection) moved a row's outputs by up to 2.4e-4 when the batch had another
row count, and a whole layer by 2e-3; fp32 moves by ~1e-6 (MKL with 2 threads). So bf16, 2x faster
than fp32 on such CPUs, could not keep "same text, same label".

How: the texts of a batch are laid end to end without padding, one row per token (tokens, hidden).
Every linear layer, LayerNorm, residual sum and activation then runs on fixed TILE-row slices of
that matrix, the last one padded with rows nobody reads: each call has one shape whatever the
batch, so its kernel sums in one order. A row of a fixed-shape product depends on its own inputs
only (not its neighbours in the tile, nor its place in it; tested). Attention runs per group of
texts of one length: PyTorch's CPU flash-attention kernel blocks by the sequence length alone and
gives each (text, head, query block) to one thread. Mean pooling adds a text's token vectors one
position at a time in fp32 (elementwise sums: no reduction kernel to block differently).

What runs in bf16: the matrix products of the encoder layers only (their inputs and weights
rounded to bf16, summed in fp32 by oneDNN, the result rounded to bf16), where nearly all the time
goes. The residual stream, LayerNorm, attention, pooling and the head stay fp32. Measured on the
shipped model's six validation tables (bench/cpu_precisions.py, issue 21): the whole model in bf16
lost 2 rows on TEC (0.11 point), more than the 0.1 point allowed; bf16 products alone lost none,
at the same speed (the casts cost what bf16 LayerNorm and attention saved).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TILE = 256  # token rows per kernel call: every matrix product and elementwise step sees (TILE, width).
# Swept 32-512 (bench/cpu_precisions.py bf16@N): 256 was fastest for bf16, 128-256 for fp32.


def supports(model: Any) -> bool:
    """True for a model whose encoder is emolabel.bert's LeanBert (the only one computed here)."""
    from emolabel.bert import LeanBert

    return isinstance(getattr(model, "encoder", None), LeanBert)


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 matrix products natively (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class InvariantForward:
    """(ids, mask) padded batch -> (batch, labels) float32 logits, each row a function of its own text.

    `model` is in fp32; `matmul_dtype` bf16 runs the encoder's matrix products in bf16 (weights cast
    once here), fp32 runs everything in fp32."""

    def __init__(self, model: Any, matmul_dtype: torch.dtype = torch.float32, tile: int = TILE):
        if not supports(model):
            raise TypeError("InvariantForward runs emolabel.bert.LeanBert encoders only.")
        enc = model.encoder
        self.tile = tile
        self.heads = enc.config.num_attention_heads
        self.embeddings = enc.embeddings
        self.layers = list(enc.encoder.layer)
        self.matmul_dtype = matmul_dtype
        with torch.no_grad():
            self.weights = [self._layer_weights(layer) for layer in self.layers]
        self.head = model.head
        self.pooling = model.config.pooling

    def _layer_weights(self, layer: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """A layer's four products' (weight, bias) in matmul_dtype; Q, K and V as one product."""
        s = layer.attention.self
        pairs = {"qkv": (torch.cat([s.query.weight, s.key.weight, s.value.weight]),
                         torch.cat([s.query.bias, s.key.bias, s.value.bias])),
                 "out": (layer.attention.output.dense.weight, layer.attention.output.dense.bias),
                 "up": (layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                 "down": (layer.output.dense.weight, layer.output.dense.bias)}
        return {k: (w.to(self.matmul_dtype), b.to(self.matmul_dtype)) for k, (w, b) in pairs.items()}

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)  # (batch,)
        order = torch.argsort(lengths, stable=True)  # texts of one length side by side: one attention call
        lengths = lengths[order]
        tokens = mask[order].bool()
        n_tokens = int(lengths.sum())
        flat = torch.zeros(self._padded(n_tokens), 2, dtype=torch.long)  # (padded tokens, id | position)
        flat[:n_tokens, 0] = ids[order][tokens]  # the texts end to end, no padding
        flat[:n_tokens, 1] = torch.arange(ids.shape[1]).expand_as(ids)[tokens]
        starts = torch.cumsum(lengths, 0) - lengths  # (batch,): each text's first token
        groups = _runs(lengths.numpy(), starts.numpy())
        x = self._embed(flat)  # (padded tokens, hidden) fp32
        for layer, weights in zip(self.layers, self.weights):
            self._layer(layer, weights, x, n_tokens, groups)
        pooled = self._pool(x, starts, groups)  # (batch, hidden) fp32
        return self._head(pooled)[torch.argsort(order)]  # back to the batch's own order

    def _padded(self, rows: int) -> int:
        return -(-rows // self.tile) * self.tile

    def _tiles(self, rows: int) -> list[slice]:
        return [slice(i, i + self.tile) for i in range(0, rows, self.tile)]

    def _embed(self, flat: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        type0 = e.token_type_embeddings.weight[0]
        x = torch.empty(flat.shape[0], type0.shape[0])
        for s in self._tiles(len(flat)):
            x[s] = e.LayerNorm(e.word_embeddings(flat[s, 0]) + e.position_embeddings(flat[s, 1]) + type0)
        return x

    def _layer(self, layer: Any, w: dict[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
               n_tokens: int, groups: list[tuple[int, int, int]]) -> None:
        """One encoder layer, in place on x (padded tokens, hidden), fp32 between the products."""
        rows, h = x.shape
        d = h // self.heads
        mm = self.matmul_dtype
        qkv = torch.empty(rows, 3 * h)
        for s in self._tiles(rows):
            qkv[s] = F.linear(x[s].to(mm), *w["qkv"])
        ctx = torch.empty_like(x)
        ctx[n_tokens:] = 0  # padding rows: read by the tile products, never by a text
        for start, n, length in groups:  # texts of one length: (n, heads, length, d) each of q, k, v
            span = slice(start, start + n * length)
            q, k, v = qkv[span].view(n, length, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            ctx[span] = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n * length, h)
        o, out = layer.attention.output, layer.output
        for s in self._tiles(rows):
            a = o.LayerNorm(x[s] + F.linear(ctx[s].to(mm), *w["out"]))
            # the activation between the FFN's products runs in their dtype: a bf16 GELU computes in
            # fp32 and rounds once, what a cast back to bf16 for the down product would do anyway
            up = layer.act(F.linear(a.to(mm), *w["up"]))
            x[s] = out.LayerNorm(a + F.linear(up, *w["down"]))

    def _pool(self, x: torch.Tensor, starts: torch.Tensor, groups: list[tuple[int, int, int]]) -> torch.Tensor:
        """(batch, hidden) fp32: each text's [CLS] vector, or the mean of its token vectors."""
        if self.pooling == "cls":
            return x[starts]
        out = []
        for start, n, length in groups:
            v = x[start : start + n * length].view(n, length, -1)  # (n, length, hidden)
            acc = v[:, 0]
            for j in range(1, length):  # one position at a time: the same sums for any n
                acc = acc + v[:, j]
            out.append(acc / length)
        return torch.cat(out)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, labels) fp32 logits of (batch, hidden) pooled vectors, in tiles."""
        n = pooled.shape[0]
        rows = self._padded(n)
        padded = torch.cat([pooled, pooled.new_zeros(rows - n, pooled.shape[1])])
        return torch.cat([self.head(padded[s]) for s in self._tiles(rows)])[:n]


def _runs(lengths: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, int]]:
    """(first token, texts, length) of each run of equal lengths in ascending `lengths`."""
    edges = np.flatnonzero(np.diff(lengths)) + 1
    firsts = np.concatenate([[0], edges]).astype(int)
    counts = np.diff(np.concatenate([firsts, [len(lengths)]]))
    return [(int(starts[f]), int(c), int(lengths[f])) for f, c in zip(firsts, counts)]
