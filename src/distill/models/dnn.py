"""DNN: embeddings and numeric inputs concatenated, then an MLP. Returns logits."""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp, squeeze_out


class DNN(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embedding = FeatureEmbedding(spec.features, spec.embedding_dim, spec.sparse)
        in_dim = self.embedding.num_fields * spec.embedding_dim + self.embedding.dense_dim
        self.over = mlp(in_dim, spec.hidden, spec.dropout, spec.out_dim)
        self.hint_layer = f"over.{len(self.over) - 1}"  # its input is the last hidden layer (distill.hints)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, dense = self.embedding(batch)  # (B, F, D), (B, 2N)
        return squeeze_out(self.over(torch.cat([fields.flatten(1), dense], dim=1)))
