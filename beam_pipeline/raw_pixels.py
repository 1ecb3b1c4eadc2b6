"""Fold the checkpoint's normalization into the first convolution, so the model takes 0-255 pixels.

Normalizing a uint8 batch ((x - mean) / std per channel, then a cast and a channels_last copy) cost about
half as much CPU as AlexNet's whole forward pass (BENCHMARKS.md). A convolution is linear, so the same
result comes from scaled weights applied to the raw pixels:

    conv(pad0((x - m) / s)) = conv_{W/s}(pad0(x)) + conv_W(pad0(-m/s)) + b

The last two terms do not depend on the image. Inside the image they are one constant per output channel
(folded into the bias); where the kernel overlaps the zero padding they differ, and a fixed map adds the
difference. In fp32 the result equals the normalized model's up to float rounding. uint8 pixels convert to
bf16 exactly, so the batch becomes the model's input with one cast; in bf16 the folded bias rounds as one
number per channel, a fixed offset of up to 2^-9 of it, so top-1 agrees with fp32 on the demo checkpoint
nearly as often as when normalizing first (BENCHMARKS.md; `make bench` checks >= 99.5%).
"""
import torch
from torch import nn

from schemas.transform import Preprocess


class RawPixelConv(nn.Module):
    """`conv` applied to normalized pixels, computed from raw 0-255 pixels of a fixed crop size."""

    def __init__(self, conv: nn.Conv2d, pre: Preprocess):
        super().__init__()
        std = torch.tensor(pre.std, dtype=torch.float64, device=conv.weight.device) * 255
        shift = -torch.tensor(pre.mean, dtype=torch.float64, device=conv.weight.device) * 255 / std
        weight, bias = conv.weight.detach().double(), _bias(conv)
        image = shift.view(1, 3, 1, 1).expand(1, 3, pre.crop, pre.crop)
        constant = nn.functional.conv2d(image, weight, None, conv.stride, conv.padding, conv.dilation)[0]
        # Output rows (columns) whose window reaches into the padding, at the top and bottom (left, right).
        self.crop = pre.crop
        self.edges = [_edges(pre.crop, *geometry) for geometry in
                      zip(conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True)]
        (top, bottom), (left, right) = self.edges
        height, width = constant.shape[1:]
        inside = constant[:, top, left] if top + bottom < height and left + right < width else 0 * bias
        border = constant - inside[:, None, None]
        border[:, top:height - bottom, left:width - right] = 0
        self.register_buffer("border", border[None].float())
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=True, device=conv.weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(weight / std.view(1, 3, 1, 1))
            self.conv.bias.copy_(bias + inside)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, then the fixed correction on the edge bands only (all of it costs more, BENCHMARKS.md)."""
        y = self.conv(x)
        if y.shape[2:] != self.border.shape[2:]:
            raise ValueError(f"this model takes {self.crop} x {self.crop} images (its checkpoint's crop), "
                             f"got {x.shape[2]} x {x.shape[3]}")
        (top, bottom), (left, right) = self.edges
        height, width = y.shape[2:]
        for rows, cols in ((slice(0, top), slice(None)), (slice(height - bottom, height), slice(None)),
                           (slice(top, height - bottom), slice(0, left)),
                           (slice(top, height - bottom), slice(width - right, width))):
            y[:, :, rows, cols] += self.border[:, :, rows, cols]
        return y


def _edges(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """How many outputs at the start, then how many of the rest at the end, see padding along one axis."""
    outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    start = sum(1 for i in range(outputs) if i * stride < padding)
    end = sum(1 for i in range(start, outputs) if i * stride - padding + dilation * (kernel - 1) > size - 1)
    return start, end


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64, device=conv.weight.device)
    return conv.bias.detach().double()


def fold_normalization(module: nn.Module, pre: Preprocess) -> nn.Module:
    """Replace the network's first convolution (the one that sees the image) by its RawPixelConv."""
    name, conv = next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels != 3 or conv.groups != 1 or isinstance(conv.padding, str) \
            or conv.padding_mode != "zeros":
        raise ValueError("cannot fold the normalization: the network does not start with a convolution "
                         "over the RGB image")
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent), attr, RawPixelConv(conv, pre))
    return module
