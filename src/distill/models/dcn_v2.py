"""DCN-v2 (Wang et al. 2021): a stack of full-rank cross layers x_{l+1} = x0 ⊙ (W x_l + b) + x_l,
in parallel with a DNN; both read the same input and their outputs are concatenated."""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp, squeeze_out


class DCNv2(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embedding = FeatureEmbedding(spec.features, spec.embedding_dim, spec.sparse)
        in_dim = self.embedding.num_fields * spec.embedding_dim + self.embedding.dense_dim
        self.cross = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(spec.cross_layers))
        self.deep = mlp(in_dim, spec.hidden, spec.dropout)
        deep_out = spec.hidden[-1] if spec.hidden else in_dim
        self.over = nn.Linear(in_dim + deep_out, spec.out_dim)
        self.hint_layer = "over"  # its input, [cross; deep], is the last hidden layer (distill.hints)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, dense = self.embedding(batch)
        x0 = torch.cat([fields.flatten(1), dense], dim=1)  # (B, I)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return squeeze_out(self.over(torch.cat([x, self.deep(x0)], dim=1)))
