"""The int8 labeling network (`label --precision int8`): oneDNN's int8 kernels, with the checkpoint's ranges.

Weights are int8 per output channel (symmetric), activations uint8 per tensor with the ranges the trainer fitted
(trainer/int8_ranges.py). Raw 0-255 pixels are exactly uint8 (scale 1, zero point 0), so the first convolution (the
folded normalization's, RawPixelConv) takes the pipeline's uint8 batch as it is. ReLU is fused into each
convolution and hidden Linear, max pools run on uint8 (max commutes with the monotone quantization), layers with no
int8 kernel (local response norm, a real adaptive pool) run in float between a dequantize and a quantize.

The kernels are the ones PT2E's x86 quantizer lowers to under torch.compile (onednn::qconv_pointwise and
qlinear_pointwise), called eagerly: nothing to compile or cache, and no torchao. They are private ops: torch is
pinned exactly, and tests/test_int8.py checks their numbers against fp32. Speed and agreement: BENCHMARKS.md.
The packed weights are opaque tensors: the network cannot be pickled or deep-copied, only built again.
"""
import math

import torch
from torch import nn

from beam_pipeline.lean_layers import SeparableMaxPool2d
from beam_pipeline.raw_pixels import RawPixelConv
from trainer.models import quantization_units

QParams = tuple[float, int]  # scale, zero point
RAW_PIXELS: QParams = (1.0, 0)


class Int8Net(nn.Module):
    """features, avgpool and classifier, as every ARCHS network (so features_and_logits reads it alike): a uint8
    NCHW batch in, fp32 penultimate activations (what the last Linear reads) and logits out."""

    def __init__(self, features: list[nn.Module], avgpool: nn.Module, classifier: list[nn.Module]):
        super().__init__()
        self.features, self.avgpool, self.classifier = nn.Sequential(*features), avgpool, nn.Sequential(*classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise ValueError(f"the int8 network takes uint8 pixels, got {x.dtype}")
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def build_int8(module: nn.Module, ranges: torch.Tensor, crop: int, vnni: bool | None = None) -> Int8Net:
    """fp32 labeling module (normalization folded, not made lean) + its checkpoint's ranges -> Int8Net, weights
    quantized and packed for oneDNN; ValueError for a network it cannot build.

    Without VNNI (`vnni`, default: this CPU's), x86's int8 multiply (vpmaddubsw) adds pairs of products in 16 bits,
    which saturate for uint8 inputs above 127 (oneDNN's documentation says so). There activations use 7 bits, and
    the first convolution, whose raw pixels use all 8, runs in fp32."""
    vnni = has_vnni() if vnni is None else vnni
    units = quantization_units(module.eval())
    if len(ranges) != len(units) or not isinstance(units[-1][1][0], nn.Linear):
        raise ValueError("int8 needs the ranges fitted for this network, and a network that ends with a Linear")
    sizes = _input_sizes(module, units, crop)
    parts: dict[str, list[nn.Module]] = {"features": [], "avgpool": [], "classifier": []}
    x_q = RAW_PIXELS
    for i, (part, layers) in enumerate(units):
        layer, relu = layers[0], len(layers) > 1
        out = None if math.isnan(ranges[i][0]) else _levels((float(ranges[i][0]), int(ranges[i][1])), vnni)
        if i == len(units) - 1:  # float in (the penultimate activations), fp32 logits out
            parts[part] += [_Dequantize(x_q), nn.Sequential(_Quantize(x_q), _QLinear(layer, x_q, None, relu))]
            continue
        if isinstance(layer, nn.AdaptiveAvgPool2d) and sizes[i] == nn.modules.utils._pair(layer.output_size):
            parts[part].append(nn.Identity())  # an identity at this crop: the input's range goes on
            continue
        parts[part].append(_step(layer, relu, x_q, out, vnni))
        x_q = out or x_q
    return Int8Net(parts["features"], nn.Sequential(*parts["avgpool"]), parts["classifier"]).eval()


def _step(layer: nn.Module, relu: bool, x_q: QParams, out: QParams | None, vnni: bool) -> nn.Module:
    if isinstance(layer, RawPixelConv):
        return _Stem(layer, out, halve=not vnni)
    if isinstance(layer, nn.Conv2d):
        return _QConv(layer, x_q, out, relu)
    if isinstance(layer, nn.Linear):
        return _QLinear(layer, x_q, out, relu)
    if isinstance(layer, nn.MaxPool2d) and _QMaxPool.fits(layer):
        return _QMaxPool(layer)
    if out is None:  # a max pool of another kind: its output keeps its input's range
        out = x_q
    return _Float(nn.Sequential(layer, nn.ReLU()) if relu else layer, x_q, out)


def _levels(q: QParams, vnni: bool) -> QParams:
    """A range fitted for 256 levels, spread over the 128 levels that non-VNNI CPUs multiply without saturating."""
    return q if vnni else (q[0] * 255 / 127, round(q[1] * 127 / 255))


def has_vnni() -> bool:
    """Whether this CPU multiplies int8 without 16-bit saturation: AVX512-VNNI, AVX-VNNI or AMX (Linux flags; False
    where they cannot be read, the safe side)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _input_sizes(module: nn.Module, units: list, crop: int) -> list[tuple[int, ...]]:
    """Each unit's input height and width at this crop, from one blank image through the fp32 network."""
    sizes, x = [], torch.zeros(1, 3, crop, crop)
    with torch.inference_mode():
        for part, layers in units:
            x = torch.flatten(x, 1) if part == "classifier" and x.dim() > 2 else x
            sizes.append(tuple(x.shape[2:]))
            for layer in layers:
                x = layer(x)
    return sizes


def _int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (int8 weight, fp32 scales)."""
    w = weight.detach().float()
    scale = (w.reshape(w.shape[0], -1).abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """fp32 -> uint8 with these qparams (with zero point 0 this is also the ReLU). Plain arithmetic, not
    torch.quantize_per_tensor: quantized tensors are deprecated in torch 2.14."""
    return torch.round(x * (1 / scale)).add_(zero_point).clamp_(0, 255).to(torch.uint8)


def _dequantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return (x.float() - zero_point) * scale


class _Quantize(nn.Module):
    def __init__(self, q: QParams):
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantize(x, *self.q)


class _Dequantize(_Quantize):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dequantize(x, *self.q)


class _Stem(nn.Module):
    """RawPixelConv on uint8 raw pixels (exact: scale 1, zero point 0; halved to 7 bits without VNNI), with ReLU,
    out uint8.

    The whole map comes out of one int8 convolution with ReLU fused and uint8 output; the edge bands, where the
    folded normalization needs the border correction before ReLU, are then computed again from their own input
    windows (fp32 out, + border, quantized): a few percent of the work, instead of an fp32 map for all of it.
    """

    def __init__(self, raw: RawPixelConv, out: QParams, halve: bool):
        super().__init__()
        conv = raw.conv
        self.halve, self.x_scale = halve, 2.0 if halve else 1.0
        q, self.w_scale = _int8_weight(conv.weight)
        self.w_zp = torch.zeros(q.shape[0], dtype=torch.int64)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.kernel, self.groups = list(conv.kernel_size), conv.groups
        self.packed = self._pack(q, self.stride, self.padding, self.dilation)
        # A band is convolved without padding from its window of the zero-padded input; one narrower than it is
        # tall (left, right) transposed, with the kernel transposed: oneDNN is several times slower on narrow
        # windows, and onednn::qconv_pointwise (torch 2.14) gives wrong numbers for an output one column wide and
        # taller than one row.
        self.packed_band = {False: self._pack(q, self.stride, [0, 0], self.dilation),
                            True: self._pack(q.transpose(2, 3).contiguous(), self.stride[::-1], [0, 0],
                                             self.dilation[::-1])}
        self.bias = conv.bias.detach().float()
        self.crop, self.out = raw.crop, out
        (top, bottom), (left, right) = raw.edges
        height, width = raw.border.shape[2:]
        bands = (((0, top), (0, width)), ((height - bottom, height), (0, width)),
                 ((top, height - bottom), (0, left)), ((top, height - bottom), (width - right, width)))
        bands = [band for band in bands if band[0][1] > band[0][0] and band[1][1] > band[1][0]]
        # Bands of one shape (top and bottom, left and right) go through one convolution, stacked on the batch:
        # their input windows copied into one zeroed buffer (zero padding: raw pixel 0 is real 0 here).
        self.band_groups = []
        for shape in dict.fromkeys((r1 - r0, c1 - c0) for (r0, r1), (c0, c1) in bands):
            group = [band for band in bands if (band[0][1] - band[0][0], band[1][1] - band[1][0]) == shape]
            borders = torch.stack([raw.border[0, :, r0:r1, c0:c1] for (r0, r1), (c0, c1) in group])[:, None]
            windows = [(self._window(0, *rows), self._window(1, *cols)) for rows, cols in group]
            self.band_groups.append((group, borders, shape[1] < shape[0], windows))

    def _pack(self, q: torch.Tensor, stride: list, padding: list, dilation: list) -> torch.Tensor:
        return torch.ops.onednn.qconv_prepack(q, self.w_scale, self.x_scale, 0, stride, padding, dilation,
                                              self.groups, None)

    def _window(self, axis: int, start: int, stop: int) -> tuple[slice, slice, int]:
        """Along rows (axis 0) or columns, outputs start..stop-1 read a window of the zero-padded input: (the
        input's part of it, where that part lies in the window, the window's length)."""
        s, p, d, k = self.stride[axis], self.padding[axis], self.dilation[axis], self.kernel[axis]
        first, end, length = start * s - p, (stop - 1) * s - p + (k - 1) * d + 1, self.crop
        source = slice(max(first, 0), min(end, length))
        target = slice(source.start - first, source.stop - first)
        return source, target, end - first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (self.crop, self.crop):
            raise ValueError(f"this model takes {self.crop} x {self.crop} images (its checkpoint's crop), "
                             f"got {x.shape[2]} x {x.shape[3]}")
        x = x.contiguous(memory_format=torch.channels_last)
        if self.halve:  # pixels rounded to 7 bits: 0-255 -> 0-127, scale 2
            x = ((x >> 1) + (x & 1)).clamp_max_(127)
        y = torch.ops.onednn.qconv_pointwise(x, self.x_scale, 0, self.packed, self.w_scale, self.w_zp, self.bias,
                                             self.stride, self.padding, self.dilation, self.groups, *self.out,
                                             torch.uint8, "relu", [], "")
        for bands, borders, transposed, windows in self.band_groups:
            y = self._band(x, y, bands, borders, transposed, windows)
        return y

    def _band(self, x, y, bands, borders, transposed, windows) -> torch.Tensor:
        n = x.shape[0]
        (_, _, height), (_, _, width) = windows[0]
        shape = (len(bands) * n, x.shape[1]) + ((width, height) if transposed else (height, width))
        stacked = torch.zeros(shape, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        for i, ((rows, rows_to, _), (cols, cols_to, _)) in enumerate(windows):
            if transposed:
                stacked[i * n:(i + 1) * n, :, cols_to, rows_to] = x[:, :, rows, cols].transpose(2, 3)
            else:
                stacked[i * n:(i + 1) * n, :, rows_to, cols_to] = x[:, :, rows, cols]
        stride, dilation = (self.stride[::-1], self.dilation[::-1]) if transposed else (self.stride, self.dilation)
        z = torch.ops.onednn.qconv_pointwise(stacked, self.x_scale, 0, self.packed_band[transposed], self.w_scale,
                                             self.w_zp, self.bias, stride, [0, 0], dilation, self.groups, 1.0, 0,
                                             torch.float32, "none", [], "")
        if transposed:
            z = z.transpose(2, 3)
        q = _quantize(z.unflatten(0, (len(bands), -1)) + borders, *self.out)
        for ((r0, r1), (c0, c1)), band in zip(bands, q, strict=True):
            y[:, :, r0:r1, c0:c1] = band
        return y


class _QConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, x: QParams, out: QParams, relu: bool):
        super().__init__()
        q, self.w_scale = _int8_weight(conv.weight)
        self.w_zp = torch.zeros(q.shape[0], dtype=torch.int64)
        self.geometry = list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups
        self.packed = torch.ops.onednn.qconv_prepack(q, self.w_scale, x[0], x[1], *self.geometry, None)
        self.bias = conv.bias.detach().float() if conv.bias is not None else None
        self.x, self.out, self.attr = x, out, "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qconv_pointwise(x, *self.x, self.packed, self.w_scale, self.w_zp, self.bias,
                                                *self.geometry, *self.out, torch.uint8, self.attr, [], "")


class _QLinear(nn.Module):
    """uint8 in; uint8 out (`out` given) or fp32 out (the logits)."""

    def __init__(self, linear: nn.Linear, x: QParams, out: QParams | None, relu: bool):
        super().__init__()
        q, self.w_scale = _int8_weight(linear.weight)
        self.w_zp = torch.zeros(q.shape[0], dtype=torch.int64)
        self.packed = torch.ops.onednn.qlinear_prepack(q, None)
        self.bias = linear.bias.detach().float() if linear.bias is not None else None
        self.x, self.attr = x, "relu" if relu else "none"
        self.out = (*out, torch.uint8) if out else (1.0, 0, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(x, *self.x, self.packed, self.w_scale, self.w_zp, self.bias,
                                                  *self.out, self.attr, [], "")


class _QMaxPool(nn.Module):
    """A max pool on uint8, the same range in and out, as SeparableMaxPool2d's row then column maxima; ceil_mode's
    last, partial windows padded with 0, the least uint8 (each keeps at least one real value). torch.max_pool2d
    refuses plain uint8 tensors (torch 2.14)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.kernel, self.stride, self.ceil_mode = pool.kernel_size, pool.stride, pool.ceil_mode
        self.separable = SeparableMaxPool2d(pool.kernel_size, pool.stride)

    @staticmethod
    def fits(pool: nn.MaxPool2d) -> bool:
        return (isinstance(pool.kernel_size, int) and isinstance(pool.stride, int) and pool.padding == 0
                and pool.dilation == 1 and not pool.return_indices)

    def _extra(self, size: int) -> int:
        """Zeros to add at the end of a side of `size` for ceil_mode (torch's rule: no window starts past it)."""
        outputs = -(-(size - self.kernel) // self.stride) + 1
        if (outputs - 1) * self.stride >= size:
            outputs -= 1
        return max(0, (outputs - 1) * self.stride + self.kernel - size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ceil_mode:
            right, bottom = self._extra(x.shape[3]), self._extra(x.shape[2])
            if right or bottom:
                x = nn.functional.pad(x, (0, right, 0, bottom))
        return self.separable(x)


class _Float(nn.Module):
    """A layer with no int8 kernel here: dequantize, run it in fp32, quantize."""

    def __init__(self, layer: nn.Module, x: QParams, out: QParams):
        super().__init__()
        self.layer, self.x, self.out = layer, x, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantize(self.layer(_dequantize(x, *self.x)), *self.out)
