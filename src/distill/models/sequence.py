"""Encoders of a behaviour sequence (data/kinds/sequence.py): the (B, L, D) embeddings of a user's
previous items, most recent first, and their mask (B, L) (True where an id is real, not padding)
become one (B, D) vector. Each is `forward(keys, mask, query)`; `query` (B, D) is the candidate
item's embedding, read only by `din`. Padding never changes an output, and a sequence of length
0 gives zeros.

    mean            the masked mean of the items
    din             target attention (Zhou et al., KDD 2018): an MLP over [q, k, q − k, q ⊙ k] scores
                    each item against the candidate q; the output is Σ w_i k_i over real items, the
                    weights NOT normalised by a softmax, as in DIN: their sum carries how strongly the
                    history speaks for this candidate (a softmax would keep only the mix)
    self_attention  one transformer block (learned positions, single-head scaled dot-product
                    attention over the real items, feed-forward, post-norm) and then the masked mean;
                    written out rather than nn.TransformerEncoderLayer so that the ONNX export is the
                    plain graph of these lines (the fused fast path takes over in eval mode)

A `module:` model can use them too: `ENCODERS["din"](dim)(table(ids), ids != 0, table(candidate))`.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, L) bool → (B, D): the mean over real positions; zeros for an empty row."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPool(nn.Module):
    needs_query = False

    def __init__(self, dim: int, max_len: int = 16):
        super().__init__()

    def forward(self, keys: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(keys, mask)


class TargetAttention(nn.Module):
    """DIN's activation unit and weighted sum (no softmax: see the module docstring)."""

    needs_query = True

    def __init__(self, dim: int, max_len: int = 16, hidden: int = 36):
        super().__init__()
        self.unit = nn.Sequential(nn.Linear(4 * dim, hidden), nn.PReLU(), nn.Linear(hidden, 1))

    def weights(self, keys: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, L): each item's weight for the candidate; 0 at padding."""
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        w = self.unit(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # (B, L)
        return w * mask.to(w.dtype)

    def forward(self, keys: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        if query is None:
            raise ValueError("din needs the candidate item's embedding as its query")
        return (self.weights(keys, mask, query).unsqueeze(-1) * keys).sum(1)  # (B, D)


class SelfAttention(nn.Module):
    """One transformer block over the real items, then their masked mean."""

    needs_query = False

    def __init__(self, dim: int, max_len: int = 16):
        super().__init__()
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)  # 0: the most recent item
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        nn.init.normal_(self.position.weight, std=0.05)

    def _positioned(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # positions from the mask's shape by tensor ops, so an exported graph takes any length L
        pos = (torch.cumsum(torch.ones_like(mask, dtype=torch.long), dim=1) - 1).clamp(max=self.max_len - 1)  # (B, L)
        return keys + self.position(pos)

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, L, L)
        # the dtype's lowest value rather than -inf: an empty row then gets uniform weights, not NaN
        # (its outputs are left out of the mean anyway)
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def weights(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, L): row i is how item i attends to each item; 0 at padded keys."""
        q, k, _ = self.qkv(self._positioned(keys, mask)).chunk(3, dim=-1)
        return self._attend(q, k, mask)

    def forward(self, keys: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        x = self._positioned(keys, mask)  # (B, L, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = self.norm1(x + self.out(self._attend(q, k, mask) @ v))
        x = self.norm2(x + self.ff(x))
        return masked_mean(x, mask)


ENCODERS: dict[str, type[nn.Module]] = {"mean": MeanPool, "din": TargetAttention, "self_attention": SelfAttention}
