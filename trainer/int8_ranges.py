"""Fit the int8 activation ranges that `label --precision int8` quantizes with (schemas.checkpoint.INT8_KEY).

Static int8 needs each layer's output range before labeling: fitted per run on its first images, two runs (or two
Dataflow workers) would label the same image differently. So the ranges are fitted once, with the embedding
projection, on the same training images, and stored in the checkpoint. The observer is PyTorch's HistogramObserver
(uint8, per tensor): it picks the range that minimizes the quantization error of the histogram, where min/max
would spend most of the 256 levels on rare outliers. The network runs in fp32, as labeling's reference is fp32.
"""
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import HistogramObserver

from common.errors import UserError
from schemas.shards import ShardSet
from schemas.transform import Preprocess
from trainer.embedding import fitting_batches
from trainer.models import quantization_units

CPU = torch.device("cpu")
MAX_IMAGES = 256  # a few batches: the histograms settle long before (BENCHMARKS.md, int8)


def fit_int8_ranges(module: nn.Module, images: list[str] | ShardSet, preprocess: Preprocess, *, source: str,
                    device: torch.device = CPU, batch_size: int = 64, workers: int = 0, max_images: int = MAX_IMAGES,
                    seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The ranges of `module`'s units on (at most max_images of) `images`, and how they were fitted, for
    Manifest.int8. Unreadable images are skipped; `module` is moved to `device`, in eval mode."""
    loader = fitting_batches(images, preprocess, batch_size, workers, max_images, seed)
    module = module.to(device, memory_format=torch.channels_last).eval()
    batches = (preprocess.normalize(x.to(device, non_blocking=True)) for x, _, _ in loader if len(x))
    table, seen = activation_ranges(module, batches)
    if not seen:
        raise UserError("fitting the int8 ranges needs readable images, found none; fit them on images like those "
                        "you will label")
    return table, {"fitted_on": seen, "source": source}


def activation_ranges(module: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The ranges table of `module`'s units over the batches (inputs as `module` takes them), and the images seen."""
    units = quantization_units(module.eval())
    observers = [None if keeps_range(units, i) else _observer() for i in range(len(units))]
    seen = 0
    with torch.inference_mode():
        for x in batches:
            seen += len(x)
            x = x.contiguous(memory_format=torch.channels_last)
            for (part, layers), observer in zip(units, observers, strict=True):
                x = torch.flatten(x, 1) if part == "classifier" and x.dim() > 2 else x
                for layer in layers:
                    x = layer(x)
                if observer is not None:
                    observer(x.float().cpu())
    ranges = [observer.calculate_qparams() if observer else (math.nan, math.nan) for observer in observers]
    return torch.tensor([[float(scale), float(zero_point)] for scale, zero_point in ranges], dtype=torch.float64), seen


def keeps_range(units: list[tuple[str, list[nn.Module]]], i: int) -> bool:
    """Whether unit i's output keeps its input's range: a max pool's does (max commutes with quantizing), and the
    last layer gives float logits."""
    return i == len(units) - 1 or isinstance(units[i][1][0], nn.MaxPool2d)


def _observer() -> HistogramObserver:
    return HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
