"""A pixel fingerprint of each image, stored beside its embedding: what finds the copies a model's features miss.

A classifier's penultimate features need not be invariant to the edits a photo goes through on its way back into a
dataset: a model trained on few classes maps a mirror image or a tighter crop of one photo as far from it as from
another photo of its class (BENCHMARKS.md, "Curation"). The fingerprint is the lowest 6 x 6 spatial frequencies
(2-D DCT-II) of each colour channel of a 32 x 32 thumbnail, the perceptual-hash recipe kept as floats:

- low frequencies survive re-encoding, resizing, small crops and overlays, which change fine detail;
- the DC term (the mean colour) is left out and the vector compared by cosine, so brightness and contrast
  changes matter little;
- mirroring the image negates the terms of odd horizontal frequency and leaves the rest, so those are kept as
  magnitudes: the fingerprint of a mirror image is the image's own.

It is computed from the model's input batch, where the image is already decoded and resized, so it costs a pooling
and two small matrix products per batch on the model's device, in every precision.
"""
import functools
import math

import torch

THUMBNAIL = 32  # pixels a side of the thumbnail the frequencies are taken from
FREQUENCIES = 6  # the lowest frequencies kept, per axis and channel
DIM = 3 * (FREQUENCIES * FREQUENCIES - 1)  # 105: each channel's terms but its DC
# Below this length (in pixel levels; photos measure in the thousands, uniform noise ~100) the terms are rounding
# errors of a flat image, whose direction means nothing: its fingerprint is zeros, like no other image's.
FLAT = 1.0


def fingerprints(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] pixels 0-255 (any dtype, any layout) -> [N, DIM] float32 unit vectors (zeros: a flat image)."""
    thumbnail = torch.nn.functional.adaptive_avg_pool2d(x.float(), THUMBNAIL)
    basis = dct_basis(x.device)
    terms = basis @ thumbnail @ basis.T  # [N, 3, F, F]: rows vertical, columns horizontal frequency
    odd = torch.arange(FREQUENCIES, device=x.device) % 2 == 1
    terms = torch.where(odd, terms.abs(), terms).flatten(2)[:, :, 1:].flatten(1)  # mirror-invariant; no DC term
    length = terms.norm(dim=1, keepdim=True)
    return torch.where(length >= FLAT, terms / length.clamp(min=FLAT), 0.0)


@functools.cache
def dct_basis(device: torch.device) -> torch.Tensor:
    """The first FREQUENCIES rows of the orthonormal DCT-II matrix of size THUMBNAIL: [F, THUMBNAIL]."""
    k = torch.arange(FREQUENCIES, dtype=torch.float64)[:, None]
    n = torch.arange(THUMBNAIL, dtype=torch.float64)[None]
    basis = torch.cos(math.pi * (2 * n + 1) * k / (2 * THUMBNAIL)) * math.sqrt(2 / THUMBNAIL)
    basis[0] /= math.sqrt(2)
    return basis.float().to(device)
