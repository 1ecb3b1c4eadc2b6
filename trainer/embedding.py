"""Fit the embedding projection: a whitened PCA of a network's penultimate activations
(schemas.checkpoint.Projection).

Raw activations are wide (4096 for AlexNet) and dominated by a few directions; a PCA keeps the directions that
vary, and whitening (each kept direction scaled to unit variance, as the "neural codes" of Babenko et al. 2014 do
with AlexNet's fc7) stops the few largest, which mostly say which class an image is, from making every image of a
class look alike (BENCHMARKS.md: near-duplicates on the sample set). The images go through the eval transform,
exactly as labeling prepares them, so the projection is fitted on the activations it will be applied to.
"""
from collections.abc import Iterable

import torch

from common.errors import UserError
from schemas.checkpoint import Projection
from schemas.shards import ShardSet
from schemas.transform import Preprocess
from trainer.models import features_and_logits
from trainer.shards import eval_batches

DIM = 128  # the default embedding size: 32x fewer numbers per image than AlexNet's 4096 activations
CPU = torch.device("cpu")
# About 5 images per AlexNet feature for the covariance, and under 2% of an ImageNet epoch (1.28M images).
MAX_IMAGES = 20_000
WHITEN_FLOOR = 0.01  # added to each kept variance, as a share of the largest: tail directions are not blown up


def fit_projection(module: torch.nn.Module, images: list[str] | ShardSet, preprocess: Preprocess, dim: int = DIM, *,
                   source: str, device: torch.device = CPU, amp_dtype: torch.dtype | None = None,
                   batch_size: int = 128, workers: int = 0, max_images: int = MAX_IMAGES,
                   seed: int = 0) -> tuple[Projection, dict]:
    """The projection of `module`'s penultimate activations on (at most max_images of) `images`, and how it was
    fitted, for Manifest.embedding. Unreadable images are skipped; `module` is moved to `device`, in eval mode.
    Of shards, the first max_images are taken: they were shuffled when written."""
    loader = fitting_batches(images, preprocess, batch_size, workers, max_images, seed)
    module = module.to(device, memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        projection, info = principal_components(activations(module, loader, preprocess, device, amp_dtype), dim)
    return projection, {**info, "source": source}


def fitting_batches(images: list[str] | ShardSet, preprocess: Preprocess, batch_size: int, workers: int,
                    max_images: int, seed: int) -> torch.utils.data.DataLoader:
    """Eval-transform batches of at most max_images of `images`: a seeded sample of files, the first of shards."""
    samples = images if isinstance(images, ShardSet) else [(uri, 0) for uri in sample(images, max_images, seed)]
    return eval_batches(samples, preprocess, batch_size, workers, limit=max_images)


def sample(images: list[str], k: int, seed: int) -> list[str]:
    """k of the images, the same for the same seed, in their listed order (for read locality); all if fewer."""
    if len(images) <= k:
        return images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:k]
    return [images[i] for i in sorted(chosen.tolist())]


def activations(module, loader, preprocess: Preprocess, device: torch.device,
                amp_dtype: torch.dtype | None) -> Iterable[torch.Tensor]:
    """The penultimate activations of each batch, float, on `device`; the loader leaves unreadable images out."""
    for x, _, _ in loader:
        if not len(x):
            continue
        x = preprocess.normalize(x.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            yield features_and_logits(module, x)[0].float()


def principal_components(batches: Iterable[torch.Tensor], dim: int) -> tuple[Projection, dict]:
    """The top-D principal components of the rows of all batches, D = min(dim, features, rows - 1), each scaled by
    1 / sqrt(its variance + WHITEN_FLOOR x the largest).

    Streaming: only the count, the sum and X^T X are kept, in float64, about the first batch's mean (so the
    covariance is not a small difference of large sums). Each component's largest-magnitude entry is positive:
    eigh's signs are arbitrary, and a refit of the same weights must give the same embeddings and version.
    """
    n, shift, total, outer = 0, None, None, None
    for x in batches:
        x = x.double()
        if shift is None:
            shift = x.mean(0)
            total, outer = torch.zeros_like(shift), torch.zeros(len(shift), len(shift), dtype=x.dtype, device=x.device)
        x = x - shift
        n, total, outer = n + len(x), total + x.sum(0), outer.addmm_(x.T, x)
    if n < 2:
        raise UserError(f"fitting the embedding projection needs at least 2 readable images, found {n}; fit it "
                        "on more images")
    mean = total / n
    covariance = (outer - n * torch.outer(mean, mean)) / (n - 1)
    finite = bool(covariance.isfinite().all())
    if not finite or not covariance.trace() > 0:
        raise UserError(f"the network's penultimate activations are {'constant' if finite else 'not finite'} over "
                        "these images, so no embedding projection fits them; train it until it learns (a diverged "
                        "or dead network has no useful embeddings)")
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    d = min(dim, len(mean), n - 1)
    components = vectors[:, -d:].flip(1)
    components *= components.gather(0, components.abs().argmax(0, keepdim=True)).sign()
    kept = variances[-d:].flip(0).clamp(min=0)
    components /= (kept + WHITEN_FLOOR * kept[0]).sqrt()
    explained = variances[-d:].clamp(min=0).sum() / variances.clamp(min=0).sum()
    info = {"dim": d, "features": len(mean), "fitted_on": n, "explained_variance": round(float(explained), 4)}
    return Projection((shift + mean).float().cpu(), components.float().cpu().contiguous()), info
