"""The transformer option: a small pre-norm encoder over hashed word tokens, trained from scratch.

Meant for a GPU (it trains far faster there, and under AMP), but it runs anywhere. Attention is
written out with plain matmul/softmax rather than ``nn.MultiheadAttention`` so that the graph
exports to ONNX opset 17 with the TorchScript exporter and quantises with dynamic INT8 like the
default model, and so that the padding mask uses a finite large negative that is safe in fp16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .base import IntentClassifier

__all__ = ["TransformerClassifier", "TransformerConfig"]

# finite: -inf rows give NaN after softmax when a text is all padding, and fp16 overflows past 65504
_MASKED = -1e4


@dataclass(frozen=True)
class TransformerConfig:
    buckets: int = 1 << 15
    max_len: int = 64
    dim: int = 128
    heads: int = 4
    layers: int = 2
    ffn: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _EncoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.dim // config.heads
        # Python constants: traced shapes would warn in the ONNX export
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm1 = nn.LayerNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.norm2 = nn.LayerNorm(config.dim)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.ffn), nn.GELU(), nn.Linear(config.ffn, config.dim)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [batch, length, dim]; bias [batch, 1, 1,
        length], 0 for tokens and _MASKED for padding."""
        b, n, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(b, n, 3, self.heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        scores = q @ k.transpose(-1, -2) * self.scale + bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.dropout(self.proj(attended))
        out: torch.Tensor = x + self.dropout(self.ffn(self.norm2(x)))
        return out


class TransformerClassifier(IntentClassifier):
    architecture = "transformer"

    def __init__(self, config: TransformerConfig, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.buckets, config.dim, padding_idx=0)
        self.position = nn.Embedding(config.max_len, config.dim)
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.dim, num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int64 [batch, length <= max_len], 0 = padding -> logits [batch, labels]."""
        ids = ids[:, : self.config.max_len]
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.embedding(ids) + self.position(positions))
        keep = (ids != 0).to(x.dtype)
        bias = ((1.0 - keep) * _MASKED)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        mask = keep.unsqueeze(-1)
        pooled = (self.norm(x) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.output(self.dropout(pooled))
        return logits
