"""Inference-only rewrites of a network's layers that compute the same numbers with less work.

PyTorch's CPU max pool also computes the argmax indices that only training needs, and ReLU before a
max pool runs over four times the pixels it has to: ReLU commutes with max, so after the pool it gives
the same result. Both are exact (max and ReLU only pick values, they never round); what they save:
BENCHMARKS.md.
"""
import torch
from torch import nn


class SeparableMaxPool2d(nn.Module):
    """A k x k max pool, stride s, no padding: the max over rows, then over columns (no indices)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._pool(x, x.dim() - 2), x.dim() - 1)

    def _pool(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        n = (x.shape[dim] - k) // s + 1
        if n < 1:
            raise ValueError(f"max pool of {k} cannot slide over a side of {x.shape[dim]}")
        out = None
        for i in range(k):
            window = x.narrow(dim, i, s * (n - 1) + 1)[(slice(None),) * dim + (slice(None, None, s),)]
            out = window if out is None else torch.maximum(out, window)
        return out


def _separable(pool: nn.MaxPool2d) -> nn.Module:
    """The separable pool where it is exact for `pool`, else `pool` itself."""
    k, s = pool.kernel_size, pool.stride
    # k > 1: a 1 x 1 pool would hand out a view of its input, which an in-place ReLU after it would change.
    if isinstance(k, int) and k > 1 and isinstance(s, int) and pool.padding == 0 and pool.dilation == 1 \
            and not pool.ceil_mode and not pool.return_indices:
        return SeparableMaxPool2d(k, s)
    return pool


def lean_for_inference(module: nn.Module) -> nn.Module:
    """Rewrite, in every nn.Sequential: max pools as separable pools, and ReLU, MaxPool as MaxPool, ReLU.

    Labeling on a CPU only; the network keeps its parameters and their names (only pools and ReLUs move).
    """
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        for i in range(len(layers) - 1):
            relu, pool = layers[i], layers[i + 1]
            if isinstance(relu, nn.ReLU) and isinstance(pool, nn.MaxPool2d) and not pool.return_indices:
                layers[i], layers[i + 1] = pool, relu
        for i, layer in enumerate(layers):
            seq[i] = _separable(layer) if isinstance(layer, nn.MaxPool2d) else layer
    return module
