"""Global motion aggregation (GMA, Jiang et al. 2021): attention over context features, applied to motion features."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RelPosEmb(nn.Module):
    """Relative-position embeddings of the position-aware attention variants.

    The released checkpoints were trained content-only, so these tables are loaded (they are part of
    the state dict) but never read by `Attention.forward`. `rel_ind[i, j] = j - i + max_pos - 1`.
    """

    def __init__(self, max_pos: int, head_dim: int) -> None:
        super().__init__()
        self.rel_height = nn.Embedding(2 * max_pos - 1, head_dim)
        self.rel_width = nn.Embedding(2 * max_pos - 1, head_dim)
        positions = torch.arange(max_pos)
        self.register_buffer("rel_ind", positions[None, :] - positions[:, None] + max_pos - 1)


class Attention(nn.Module):
    """Content self-attention of the context features: softmax_j(q_i . k_j / sqrt(head_dim)) per head.

    No value or output projection here; values come from the motion features in `Aggregate`.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, max_pos: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.to_qk = nn.Conv2d(dim, 2 * num_heads * head_dim, 1, bias=False)
        self.pos_emb = RelPosEmb(max_pos, head_dim)

    def forward(self, context: Tensor) -> Tensor:
        """context (B, dim, h, w) -> attention (B, heads, N, N), N = h*w row-major, rows sum to 1 over keys."""
        batch, _, height, width = context.shape
        q, k = self.to_qk(context).chunk(2, dim=1)  # each (B, heads*head_dim, h, w), head-major channels
        # (B, heads*d, h, w) -> (B, heads, d, N) -> (B, heads, N, d)
        q = q.reshape(batch, self.num_heads, self.head_dim, height * width).transpose(2, 3)
        k = k.reshape(batch, self.num_heads, self.head_dim, height * width).transpose(2, 3)
        similarity = torch.matmul(q * self.scale, k.transpose(2, 3))  # (B, heads, N, N)
        return similarity.softmax(dim=-1)


class Aggregate(nn.Module):
    """Aggregated motion: motion + gamma * project(attention @ to_v(motion)); gamma is the paper's alpha."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        self.to_v = nn.Conv2d(dim, inner_dim, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(inner_dim, dim, 1, bias=False) if inner_dim != dim else None

    def forward(self, attention: Tensor, motion: Tensor) -> Tensor:
        """attention (B, heads, N, N), motion (B, dim, h, w) -> (B, dim, h, w). The attention comes in the dtype
        the update runs in (GMA.forward casts it once per pair, not here in every iteration)."""
        batch, _, height, width = motion.shape
        v = self.to_v(motion)  # (B, heads*d, h, w)
        # (B, heads*d, h, w) -> (B, heads, d, N) -> (B, heads, N, d)
        v = v.reshape(batch, self.num_heads, self.head_dim, height * width).transpose(2, 3)
        out = torch.matmul(attention, v)  # (B, heads, N, d)
        # (B, heads, N, d) -> (B, heads, d, N) -> (B, heads*d, h, w)
        out = out.transpose(2, 3).reshape(batch, self.num_heads * self.head_dim, height, width)
        if self.project is not None:
            out = self.project(out)
        return motion + self.gamma * out
