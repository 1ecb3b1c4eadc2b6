"""Training data from ImageFolder trees on any fsspec URL (local or gs://).

Images are decoded with the shared image contract (schemas.preprocess) and kept uint8 until the batch
reaches the model, where it is normalized once. An image that cannot be read mid-epoch is dropped
from its batch and counted, never a crash.
"""
import random

import fsspec
import torch
from PIL import Image
from torchvision import transforms

from schemas.errors import UserError
from schemas.preprocess import INTERPOLATIONS, Preprocess, decode_image, to_uint8_tensor
from schemas.storage import read_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(UserError):
    """Training data that cannot be used; the message names the folder and the fix."""


def list_image_folder(url: str, class_names: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folders, or the given order) and (uri, label_index) samples under `url`."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        raise DataError(f"data folder {url} does not exist; expect {url}/<class>/<image files>")
    found = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))
    classes = class_names or found
    if not classes:
        raise DataError(f"{url} has no class folders; expect {url}/<class>/<image files>")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(p for p in fs.find(f"{root}/{name}") if p.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {url}/{name} has no images; add images or remove the folder")
        samples += [(fs.unstrip_protocol(p), index) for p in files]
    return classes, samples


def train_transform(pre: Preprocess):
    return transforms.Compose([
        transforms.RandomResizedCrop(pre.crop, scale=(0.5, 1.0), interpolation=_torchvision_mode(pre)),
        transforms.RandomHorizontalFlip(),
        to_uint8_tensor,
    ])


def _torchvision_mode(pre: Preprocess):
    return transforms.InterpolationMode(Image.Resampling(INTERPOLATIONS[pre.interpolation]).name.lower())


class ImageDataset(torch.utils.data.Dataset):
    """(uri, label) samples -> (uint8 CHW tensor, label), or None for an unreadable image."""

    def __init__(self, samples: list[tuple[str, int]], transform, min_side: int):
        self.samples, self.transform, self.min_side = samples, transform, min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        uri, label = self.samples[i]
        try:
            return self.transform(decode_image(read_bytes(uri), self.min_side)[0]), label
        except Exception:  # a broken image costs one sample, not the run; collate counts it
            return None


def collate(items):
    """Stack the readable items; the third value counts the unreadable ones that were dropped."""
    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), len(items)
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), len(items) - len(good)


def loader(samples, transform, min_side: int, batch_size: int, shuffle: bool, workers: int, seed: int,
           sampler=None) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ImageDataset(samples, transform, min_side), batch_size=batch_size, shuffle=shuffle and sampler is None,
        sampler=sampler, num_workers=workers, collate_fn=collate, generator=generator,
        persistent_workers=workers > 0, worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available())


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)
