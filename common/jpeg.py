"""torchvision's JPEG decoders (libjpeg-turbo on CPUs, nvJPEG on GPUs) without importing torchvision.

`torchvision.io.decode_jpeg` is a thin wrapper around the ops its `image_stable` extension registers, but importing
any part of torchvision runs its package, which imports torchvision.ops and with them torch._dynamo: a large part of
labeling's start-up (BENCHMARKS.md, "Start-up"), for ops labeling never uses. Here the extension is loaded by itself.
"""
import functools
import importlib.machinery
import importlib.util
import os

import torch

RGB = 3  # torchvision.io.ImageReadMode.RGB
CPU = torch.device("cpu")


@functools.cache
def _image_ops():
    """torch.ops.image, its extension found as torchvision finds it (any of this Python's extension suffixes)."""
    folder = os.path.dirname(importlib.util.find_spec("torchvision").origin)
    finder = importlib.machinery.FileFinder(folder, (importlib.machinery.ExtensionFileLoader,
                                                     importlib.machinery.EXTENSION_SUFFIXES))
    torch.ops.load_library(finder.find_spec("image_stable").origin)
    return torch.ops.image


def decode_jpeg(jpegs: torch.Tensor | list[torch.Tensor], mode: int, device: torch.device = CPU
                ) -> torch.Tensor | list[torch.Tensor]:
    """`torchvision.io.decode_jpeg(jpegs, mode, device)`: one JPEG (1-D uint8 on the CPU) or a list of them -> uint8
    CHW tensor(s) on `device`, `mode` an ImageReadMode value; RuntimeError for data the decoder refuses."""
    ops, batch = _image_ops(), jpegs if isinstance(jpegs, list) else [jpegs]
    if device.type == "cuda":
        decoded = ops.decode_jpegs_cuda(batch, mode, device)
    else:
        decoded = [ops.decode_jpeg(jpeg, mode, False) for jpeg in batch]
    return decoded if isinstance(jpegs, list) else decoded[0]
