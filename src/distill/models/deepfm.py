"""DeepFM (Guo et al. 2017): first-order terms + factorisation-machine pairwise terms + a DNN.

Numeric features join the FM as fields: value · v_f + missing · m_f.
"""
import torch
from torch import nn

from distill.data.batch import Batch
from distill.models.parts import FeatureEmbedding, ModelSpec, mlp, squeeze_out


class DeepFM(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = spec.embedding_dim
        self.embedding = FeatureEmbedding(spec.features, d, spec.sparse)
        self.first_order = FeatureEmbedding(spec.features, spec.out_dim, spec.sparse, pool_only=True)
        n_num = len(self.embedding.numeric_names)
        self.first_dense = nn.Linear(2 * n_num, spec.out_dim) if n_num else None
        self.numeric_fields = nn.Parameter(torch.randn(n_num, 2, d) * 0.05)  # (N, 2, D)
        n_fields = self.embedding.num_fields + n_num
        self.deep = mlp(n_fields * d, spec.hidden, spec.dropout, spec.out_dim)
        self.fm_out = nn.Linear(1, spec.out_dim, bias=False)  # lets a multiclass head use the FM score
        self.hint_layer = f"deep.{len(self.deep) - 1}"  # its input is the DNN's last hidden layer (distill.hints)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, dense = self.embedding(batch)  # (B, F, D), (B, 2N)
        n_num = self.numeric_fields.shape[0]
        if n_num:
            num = torch.einsum("bnk,nkd->bnd", dense.view(-1, n_num, 2), self.numeric_fields)  # (B, N, D)
            fields = torch.cat([fields, num], dim=1)
        # FM: ½((Σv)² − Σv²) summed over the embedding dimension
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(1, keepdim=True)  # (B, 1)
        first = self.first_order.fields(batch).sum(1)  # (B, out)
        if self.first_dense is not None:
            first = first + self.first_dense(dense)
        return squeeze_out(first + self.fm_out(fm) + self.deep(fields.flatten(1)))
