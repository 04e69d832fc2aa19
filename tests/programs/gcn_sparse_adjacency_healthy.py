"""A Kipf-style two-layer GCN (pygcn's `GraphConvolution`: `support = x @ W`,
`output = torch.spmm(adj, support)`) trained full-batch on node labels, with the
normalised adjacency as a sparse COO tensor passed to every forward. Healthy: trainlens
must run it clean (a sparse input once crashed a probe; cf. pytorch/pytorch#54638, a GCN
with sparse inputs and dense layers)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


class GraphConvolution(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        stdv = 1.0 / math.sqrt(out_features)
        self.weight.data.uniform_(-stdv, stdv)
        self.bias.data.uniform_(-stdv, stdv)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        support = torch.mm(x, self.weight)
        return torch.spmm(adj, support) + self.bias


class GCN(nn.Module):
    def __init__(self, nfeat: int, nhid: int, nclass: int, dropout: float = 0.5):
        super().__init__()
        self.gc1 = GraphConvolution(nfeat, nhid)
        self.gc2 = GraphConvolution(nhid, nclass)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gc1(x, adj))
        x = F.dropout(x, self.dropout, training=self.training)
        return F.log_softmax(self.gc2(x, adj), dim=1)


def graph(n: int = 300, classes: int = 4, feats: int = 32):
    """Two-block community graph: features noisy around a class centre, edges mostly inside
    a class; adjacency row-normalised with self loops, as pygcn's `normalize` does."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, feats, generator=g)
    features = centres[labels] * 0.5 + torch.randn(n, feats, generator=g)
    src = torch.randint(0, n, (6 * n,), generator=g)
    dst = torch.randint(0, n, (6 * n,), generator=g)
    keep = (labels[src] == labels[dst]) | (torch.rand(6 * n, generator=g) < 0.1)
    src, dst = src[keep], dst[keep]
    loops = torch.arange(n)
    rows = torch.cat([src, dst, loops])
    cols = torch.cat([dst, src, loops])
    adj = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(len(rows)), (n, n), check_invariants=True
    )
    adj = adj.coalesce()
    deg = torch.sparse.sum(adj, dim=1).to_dense()
    values = adj.values() / deg[adj.indices()[0]]
    adj = torch.sparse_coo_tensor(adj.indices(), values, (n, n), check_invariants=True)
    adj = adj.coalesce()
    return features, adj, labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    features, adj, labels = graph()
    idx_train = torch.arange(0, 200)
    idx_val = torch.arange(200, 300)
    model = GCN(features.shape[1], 16, int(labels.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(100):
            model.train()
            optimizer.zero_grad()
            output = model(features, adj)
            loss_train = F.nll_loss(output[idx_train], labels[idx_train])
            loss_train.backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                output = model(features, adj)
                F.nll_loss(output[idx_val], labels[idx_val])
