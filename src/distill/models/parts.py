"""Small named parts the models are built from: the spec a model is built from, embeddings, MLPs.

A `ModelSpec` is data (feature names, types, cardinalities); the embedding tables live in the
model built from it. Two models built from one spec never share a table unless
`share_tables` is called, explicitly, by the sync loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.data.batch import Batch


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    type: str  # categorical | numeric | multi_categorical | sequence
    cardinality: int = 0  # rows of the embedding table (categorical kinds)
    shares: str | None = None  # sequence: the categorical feature whose table it reads (its candidate)
    encoder: str | None = None  # sequence: mean | din | self_attention (None: mean)
    max_len: int = 16  # sequence: longest history (self_attention's positions)
    side_of: str | None = None  # sequence: the sequence it is a side channel of (added to its items)


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model factory needs: `factory(spec) -> nn.Module` returning logits."""

    features: tuple[FeatureInfo, ...]
    out_dim: int  # 1 for binary / regression, C for multiclass
    hidden: tuple[int, ...] = (256, 128)
    embedding_dim: int = 16
    dropout: float = 0.0
    cross_layers: int = 3
    tower_dim: int = 32
    user_features: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    sparse: bool = False  # embedding tables with sparse gradients (train.sparse_embeddings)

    def subset(self, names: set[str]) -> tuple[FeatureInfo, ...]:
        return tuple(f for f in self.features if f.name in names)


class FeatureEmbedding(nn.Module):
    """Per-feature embedding tables; numeric features pass through as (value, missing) pairs.

    `forward` returns the categorical embeddings stacked as fields (B, F, D) and the numeric inputs
    concatenated (B, 2·N). Tables are keyed by feature name so the sync loop can share them.

    A sequence feature is one field too: its items' embeddings encoded to (B, D) by
    `sequences[name]` (models/sequence.py). With `shares` naming a categorical feature this
    model reads, it has no table of its own: it reads the candidate's. A side channel (`side_of`) is
    no field: its embeddings are added to its sequence's items. `encoder` overrides every
    sequence's encoder (the din model); `pool_only` mean-pools them (wide and first-order parts,
    whose 1-wide "embeddings" are weights, not vectors to attend over).
    """

    def __init__(self, features: tuple[FeatureInfo, ...], dim: int, sparse: bool = False,
                 encoder: str | None = None, pool_only: bool = False):
        super().__init__()
        self.dim = dim
        self.sparse_names = [f.name for f in features if f.type != "numeric" and f.side_of is None]
        self.numeric_names = [f.name for f in features if f.type == "numeric"]
        self.tables = nn.ModuleDict()
        for f in features:
            if f.type == "categorical":
                self.tables[f.name] = nn.Embedding(f.cardinality, dim, sparse=sparse)
            elif f.type == "multi_categorical":
                # An nn.Embedding + masked mean rather than nn.EmbeddingBag: the same numbers, but
                # EmbeddingBag with padding_idx does not export to ONNX, and serving needs it to.
                self.tables[f.name] = nn.Embedding(f.cardinality, dim, padding_idx=0, sparse=sparse)
            elif f.type == "sequence" and not self._reads_candidate(f, features):
                self.tables[f.name] = nn.Embedding(f.cardinality, dim, padding_idx=0, sparse=sparse)
        self.multi_names = {f.name for f in features if f.type == "multi_categorical"}
        # Set by share_tables: one dict for both models, so a shared table is looked up once per
        # batch and the two models' gradients meet before its (costly) backward.
        self.memo: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        for n, t in self.tables.items():
            nn.init.normal_(t.weight, std=0.05)
            if n in self.multi_names:
                with torch.no_grad():
                    t.weight[0].zero_()
        # after the tables, so a model without sequences draws the same initial weights as before
        self.sequences = nn.ModuleDict()
        self.table_of: dict[str, str] = {}  # sequence → the table it reads
        self.query_of: dict[str, str] = {}  # sequence → its candidate feature, for encoders that need one
        self.sides: dict[str, list[str]] = {}  # sequence → its side channels
        self.side_query: dict[str, str] = {}  # side channel → the candidate's side feature (its category)
        for f in features:
            if f.type == "sequence" and f.side_of is not None:
                if not any(g.name == f.side_of and g.type == "sequence" for g in features):
                    raise ValueError(f"feature '{f.name}': a side channel of '{f.side_of}', which this model does not read")
                self.sides.setdefault(f.side_of, []).append(f.name)
                self.table_of[f.name] = f.shares if self._reads_candidate(f, features) else f.name
                if self._reads_candidate(f, features):
                    self.side_query[f.name] = f.shares  # the candidate's side (its category) joins din's query
            elif f.type == "sequence":
                forced = encoder if self._reads_candidate(f, features) else None
                self._add_sequence(f, features, dim, "mean" if pool_only else forced or f.encoder or "mean")

    @staticmethod
    def _reads_candidate(f: FeatureInfo, features: tuple[FeatureInfo, ...]) -> bool:
        return f.shares is not None and any(g.name == f.shares and g.type == "categorical" for g in features)

    def _add_sequence(self, f: FeatureInfo, features: tuple[FeatureInfo, ...], dim: int, name: str) -> None:
        from distill.models.sequence import ENCODERS
        if name not in ENCODERS:
            raise ValueError(f"feature '{f.name}': unknown sequence encoder '{name}' (choose one of {', '.join(ENCODERS)})")
        enc = ENCODERS[name](dim, f.max_len)
        candidate = self._reads_candidate(f, features)
        if enc.needs_query and not candidate:
            raise ValueError(f"feature '{f.name}': encoder '{name}' takes the candidate '{f.shares}' as its query, "
                             f"and this model does not read '{f.shares}'")
        self.sequences[f.name] = enc
        self.table_of[f.name] = f.shares if candidate else f.name
        if enc.needs_query:
            self.query_of[f.name] = f.shares

    def sequence(self, name: str, batch: Batch) -> torch.Tensor:
        """A sequence feature's (B, L) ids → (B, D) by its encoder; 0 is padding. Each side channel's
        embeddings are added to the items' (and, for din, its candidate's to the query)."""
        ids = batch[name]
        keys = self.tables[self.table_of[name]](ids)  # (B, L, D)
        query = self.lookup(self.query_of[name], batch[self.query_of[name]]) if name in self.query_of else None
        for side in self.sides.get(name, []):
            keys = keys + self.tables[self.table_of[side]](batch[side])  # (B, L, D): one id per item
            if query is not None and side in self.side_query:
                query = query + self.lookup(self.side_query[side], batch[self.side_query[side]])
        return self.sequences[name](keys, ids != 0, query)

    @property
    def num_fields(self) -> int:
        return len(self.sparse_names)

    @property
    def dense_dim(self) -> int:
        return 2 * len(self.numeric_names)

    def lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """(B,) ids → (B, D); a multi-valued (B, L) bag → the mean of its non-padding rows (B, D)."""
        if self.memo is not None and self.training and name in self.memo and self.memo[name][0] is ids:
            return self.memo[name][1]  # the other model already looked these ids up in this step
        emb = self.tables[name](ids)
        if name in self.multi_names:
            mask = (ids != 0).unsqueeze(-1).to(emb.dtype)  # (B, L, 1)
            emb = (emb * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # an empty bag gives zeros
        if self.memo is not None and self.training and name in self.memo:
            self.memo[name] = (ids, emb)  # holding `ids` keeps its id() from being reused
        return emb

    def fields(self, batch: Batch, names: list[str] | None = None) -> torch.Tensor:
        names = self.sparse_names if names is None else names
        if not names:
            return _empty(batch, self.dim)
        return torch.stack([self.sequence(n, batch) if n in self.sequences else self.lookup(n, batch[n])
                            for n in names], dim=1)  # (B, F, D)

    def dense(self, batch: Batch, names: list[str] | None = None) -> torch.Tensor:
        names = self.numeric_names if names is None else names
        if not names:
            return _empty(batch).flatten(1)
        return torch.cat([batch[n] for n in names], dim=1)  # (B, 2N)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fields(batch), self.dense(batch)


def _empty(batch: Batch, dim: int = 0) -> torch.Tensor:
    """A (B, 0, dim) float tensor whose B follows the batch: traced or exported graphs must not
    freeze the batch size seen at export time (len(batch) would become a constant)."""
    ref = next(iter(batch.features.values()))
    return ref.new_zeros((ref.shape[0], 0, dim), dtype=torch.float32)


def mlp(in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0, out_dim: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def squeeze_out(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) → (B,) for binary / regression; (B, C) stays."""
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


def share_tables(teacher: nn.Module, student: nn.Module, names: list[str]) -> list[str]:
    """Make the student use the teacher's embedding table for each of `names` (same module object).

    Returns the names actually shared. Both models must expose `.embedding` (a FeatureEmbedding).
    """
    t_emb, s_emb = getattr(teacher, "embedding", None), getattr(student, "embedding", None)
    if not isinstance(t_emb, FeatureEmbedding) or not isinstance(s_emb, FeatureEmbedding):
        raise ValueError("share_embeddings needs models with a FeatureEmbedding named 'embedding'")
    shared = []
    for n in names:
        if n in t_emb.tables and n in s_emb.tables:
            if t_emb.tables[n].weight.shape != s_emb.tables[n].weight.shape:
                raise ValueError(f"cannot share '{n}': table shapes differ")
            s_emb.tables[n] = t_emb.tables[n]
            shared.append(n)
    memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {n: (torch.empty(0), torch.empty(0)) for n in shared}
    t_emb.memo = s_emb.memo = memo
    return shared


def share_sequence_encoders(teacher: nn.Module, student: nn.Module, names: list[str]) -> list[str]:
    """Make the student use the teacher's encoder module (models/sequence.py) for each sequence of
    `names` both models encode the same way (distillation.share_sequence_encoder). Returns the
    names shared; call after `share_tables`, whose tables the encoders read."""
    t_emb, s_emb = getattr(teacher, "embedding", None), getattr(student, "embedding", None)
    if not isinstance(t_emb, FeatureEmbedding) or not isinstance(s_emb, FeatureEmbedding):
        raise ValueError("share_sequence_encoder needs models with a FeatureEmbedding named 'embedding'")
    shared = []
    for n in names:
        if n in t_emb.sequences and n in s_emb.sequences:
            t_enc, s_enc = t_emb.sequences[n], s_emb.sequences[n]
            if type(t_enc) is not type(s_enc) or [p.shape for p in t_enc.parameters()] != [p.shape for p in s_enc.parameters()]:
                raise ValueError(f"cannot share the encoder of '{n}': the teacher's and the student's differ")
            s_emb.sequences[n] = t_enc
            shared.append(n)
    return shared
