"""Two towers: user features → u, item features → v, logit = ⟨u, v⟩ + b.

The towers meet only in the inner product, so item vectors can be precomputed and served from an
index; the price is that no user×item cross feature can enter (the PFD paper's coarse-ranking
student). Features not named in `user_features` form the item tower. A behaviour sequence belongs to the
user tower (name it in `user_features`); its encoder cannot be din, whose query is the candidate item.

Served as a retriever, the global bias rides in one extra coordinate so that the inner product is
the logit exactly: user_vector = [u, 1], item_vector = [v, b], ⟨user_vector, item_vector⟩ = ⟨u, v⟩ + b
(a constant per user, so it changes no ranking; both vectors have tower_dim + 1 coordinates).
"""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp


class TwoTower(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.out_dim != 1:
            raise ValueError("two_tower returns one score per user-item pair (binary or regression)")
        self.embedding = FeatureEmbedding(spec.features, spec.embedding_dim, spec.sparse)
        users = set(spec.user_features)
        for seq, candidate in self.embedding.query_of.items():
            if (seq in users) != (candidate in users):  # din's query is the candidate: it would join the towers
                raise ValueError(f"feature '{seq}': encoder 'din' attends with the candidate '{candidate}', which is in "
                                 f"the other tower; a two-tower model scores by the towers' inner product alone "
                                 f"(use encoder mean or self_attention)")
        for seq, sides in self.embedding.sides.items():
            for side in sides:
                if (side in users) != (seq in users):
                    raise ValueError(f"feature '{side}': a side channel of '{seq}' belongs to the same tower as '{seq}' "
                                     f"(list both in user_features, or neither)")
        self.user_sparse = [n for n in self.embedding.sparse_names if n in users]
        self.user_dense = [n for n in self.embedding.numeric_names if n in users]
        self.item_sparse = [n for n in self.embedding.sparse_names if n not in users]
        self.item_dense = [n for n in self.embedding.numeric_names if n not in users]
        d = spec.embedding_dim
        self.user_tower = mlp(len(self.user_sparse) * d + 2 * len(self.user_dense), spec.hidden, spec.dropout, spec.tower_dim)
        self.item_tower = mlp(len(self.item_sparse) * d + 2 * len(self.item_dense), spec.hidden, spec.dropout, spec.tower_dim)
        self.bias = nn.Parameter(torch.zeros(()))
        # the item tower's last layer: its input is the last hidden layer on the item side (distill.hints)
        self.hint_layer = f"item_tower.{len(self.item_tower) - 1}"

    def tower(self, batch: Batch, sparse: list[str], dense: list[str], net: nn.Module) -> torch.Tensor:
        x = torch.cat([self.embedding.fields(batch, sparse).flatten(1), self.embedding.dense(batch, dense)], dim=1)
        return net(x)  # (B, tower_dim)

    def user_vector(self, batch: Batch) -> torch.Tensor:
        """[u, 1]: (B, tower_dim + 1), from the user tower's features alone."""
        u = self.tower(batch, self.user_sparse, self.user_dense, self.user_tower)
        return torch.cat([u, torch.ones_like(u[:, :1])], dim=1)

    def item_vector(self, batch: Batch) -> torch.Tensor:
        """[v, b]: (B, tower_dim + 1), from the item tower's features alone."""
        v = self.tower(batch, self.item_sparse, self.item_dense, self.item_tower)
        return torch.cat([v, self.bias.expand(v.shape[0], 1)], dim=1)

    def _sides(self, sparse: list[str]) -> list[str]:
        return [s for n in sparse for s in self.embedding.sides.get(n, [])]  # read inside their sequence's field

    @property
    def user_features(self) -> list[str]:
        return self.user_sparse + self._sides(self.user_sparse) + self.user_dense

    @property
    def item_features(self) -> list[str]:
        return self.item_sparse + self._sides(self.item_sparse) + self.item_dense

    def forward(self, batch: Batch) -> torch.Tensor:
        u = self.tower(batch, self.user_sparse, self.user_dense, self.user_tower)
        v = self.tower(batch, self.item_sparse, self.item_dense, self.item_tower)
        return (u * v).sum(-1) + self.bias  # (B,)


def tower_split(model: nn.Module, names: list[str]) -> dict[str, list[str]] | None:
    """{"user": [...], "item": [...]} in the order of `names` for a two-tower model, else None
    (what validate and run.json list, and what export --towers splits on)."""
    if not isinstance(model, TwoTower):
        return None
    users = set(model.user_features)
    return {"user": [n for n in names if n in users], "item": [n for n in names if n not in users]}
