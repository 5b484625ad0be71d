"""DIN (Zhou et al., KDD 2018): every behaviour sequence attended to with its candidate item as the
query (models/sequence.py, TargetAttention), then the fields and numeric inputs into an MLP, as in
the DNN. A sequence must name its candidate with `shares:`; one without a candidate in this model
is mean-pooled. Returns logits."""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp, squeeze_out


class DIN(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embedding = FeatureEmbedding(spec.features, spec.embedding_dim, spec.sparse, encoder="din")
        if not self.embedding.query_of:
            raise ValueError("din attends over a behaviour sequence with its candidate: give a 'type: sequence' feature "
                             "'shares: <a categorical feature this model reads>'")
        in_dim = self.embedding.num_fields * spec.embedding_dim + self.embedding.dense_dim
        self.over = mlp(in_dim, spec.hidden, spec.dropout, spec.out_dim)
        self.hint_layer = f"over.{len(self.over) - 1}"  # its input is the last hidden layer (distill.hints)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, dense = self.embedding(batch)  # (B, F, D) with each sequence attended to, (B, 2N)
        return squeeze_out(self.over(torch.cat([fields.flatten(1), dense], dim=1)))
