"""The image adapter: a linear map initialised to the identity, so training starts from frozen DOFA exactly."""
from __future__ import annotations

import torch
from torch import nn


class ImageAdapter(nn.Module):
    """x -> W x + b (W = I at start), optionally followed by a residual MLP whose last layer starts at zero."""

    def __init__(self, dim: int, mlp_hidden: int = 0):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()
        self.mlp = None
        if mlp_hidden:
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return x + self.mlp(x) if self.mlp is not None else x
