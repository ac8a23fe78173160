"""A lean BERT encoder for inference, with the same parameter names as transformers' BertModel.

Why not transformers' own class at inference time: importing transformers' model code costs
2.0 s of a 4.6 s `emolabel tag` on a 10-row file here (issue 4 asks for under 3 s), and this
version fuses the query/key/value projections into one matrix product and calls PyTorch's
scaled_dot_product_attention directly. Training still uses transformers (from_pretrained, any
BERT-family base); tests check that both give the same logits. Only plain BERT configs are
taken (absolute positions, GELU or ReLU, no decoder); anything else falls back to transformers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


def supports(encoder_config: dict[str, Any]) -> bool:
    """True when `encoder_config` is a plain BERT this module computes exactly."""
    return (
        encoder_config.get("model_type") == "bert"
        and encoder_config.get("hidden_act", "gelu") in _ACTIVATIONS
        and encoder_config.get("position_embedding_type", "absolute") == "absolute"
        and not encoder_config.get("is_decoder", False)
        and not encoder_config.get("add_cross_attention", False)
        # heads that do not divide the width: transformers refuses such a config with a message
        and isinstance(encoder_config.get("hidden_size"), int)
        and isinstance(encoder_config.get("num_attention_heads"), int)
        and encoder_config["num_attention_heads"] > 0
        and encoder_config["hidden_size"] % encoder_config["num_attention_heads"] == 0
    )


class _Dense(nn.Module):  # holds `dense` (+ `LayerNorm`) under BertModel's names
    def __init__(self, d_in: int, d_out: int, eps: float | None = None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)


class _Attention(nn.Module):
    def __init__(self, h: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(h)
        self.output = _Dense(h, h, eps)


class _Layer(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.heads = c.num_attention_heads
        self.act = _ACTIVATIONS[c.hidden_act]
        self.attention = _Attention(c.hidden_size, c.layer_norm_eps)
        self.intermediate = _Dense(c.hidden_size, c.intermediate_size)
        self.output = _Dense(c.intermediate_size, c.hidden_size, c.layer_norm_eps)
        self._qkv: tuple[torch.Tensor, torch.Tensor] | None = None  # fused weights, made on first use

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._qkv = None  # .to(device/dtype) or loading: fuse again from the new weights
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        s = self.attention.self
        if isinstance(s.query, nn.Linear):
            if self._qkv is None or self._qkv[0].dtype != s.query.weight.dtype or self._qkv[0].device != x.device:
                self._qkv = (torch.cat([s.query.weight, s.key.weight, s.value.weight]),  # (3h, h): one GEMM
                             torch.cat([s.query.bias, s.key.bias, s.value.bias]))
            qkv = F.linear(x, *self._qkv)
        else:  # int8 dynamic quantization replaced the Linear modules
            qkv = torch.cat([s.query(x), s.key(x), s.value(x)], dim=-1)
        qkv = qkv.view(b, t, 3, self.heads, h // self.heads)  # (b, t, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, t, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (b, heads, t, d)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)
        o = self.attention.output
        x = o.LayerNorm(x + o.dense(ctx))
        y = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + y)


class _Embeddings(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        # _weight=empty: no random init, the weights are loaded next (and init on the meta
        # device would import torch._dynamo: 0.9 s of start-up)
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.position_embeddings = nn.Embedding(
            c.max_position_embeddings, c.hidden_size, _weight=torch.empty(c.max_position_embeddings, c.hidden_size))
        self.token_type_embeddings = nn.Embedding(
            c.type_vocab_size, c.hidden_size, _weight=torch.empty(c.type_vocab_size, c.hidden_size))
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _Stack(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class LeanBert(nn.Module):
    """BertModel's forward for inference (dropout off): input ids + mask -> last hidden state."""

    def __init__(self, encoder_config: dict[str, Any]):
        super().__init__()
        defaults = dict(layer_norm_eps=1e-12, type_vocab_size=2, max_position_embeddings=512, hidden_act="gelu")
        self.config = SimpleNamespace(**(defaults | encoder_config))
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Stack(self.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        x = self.embeddings(input_ids)  # (batch, seq, hidden)
        mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq): True = attend
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return SimpleNamespace(last_hidden_state=x)
