"""Wide & Deep (Cheng et al. 2016): a linear model over one-hot features plus a DNN, summed."""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp, squeeze_out


class WideDeep(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embedding = FeatureEmbedding(spec.features, spec.embedding_dim, spec.sparse)
        # The wide part: per-feature weights (one-hot · w == a 1-dim embedding per category, per class).
        self.wide = FeatureEmbedding(spec.features, spec.out_dim, spec.sparse, pool_only=True)
        self.wide_dense = nn.Linear(self.wide.dense_dim, spec.out_dim) if self.wide.dense_dim else None
        in_dim = self.embedding.num_fields * spec.embedding_dim + self.embedding.dense_dim
        self.deep = mlp(in_dim, spec.hidden, spec.dropout, spec.out_dim)
        self.hint_layer = f"deep.{len(self.deep) - 1}"  # its input is the deep part's last hidden layer (distill.hints)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, dense = self.embedding(batch)  # (B, F, D), (B, 2N)
        deep = self.deep(torch.cat([fields.flatten(1), dense], dim=1))  # (B, out)
        wide = self.wide.fields(batch).sum(dim=1)  # (B, out)
        if self.wide_dense is not None:
            wide = wide + self.wide_dense(self.wide.dense(batch))
        return squeeze_out(wide + deep)
