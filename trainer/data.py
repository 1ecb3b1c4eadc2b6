"""Training data from ImageFolder trees or (uri, label) manifests on any fsspec URL (local or gs://).

Images are decoded with the shared image contract (schemas.transform) and kept uint8 until the batch
reaches the model, where it is normalized once. An image that cannot be read mid-epoch is dropped
from its batch and counted, never a crash.
"""
import math

import fsspec
import pyarrow as pa
import pyarrow.csv
import pyarrow.dataset
import torch
from PIL import Image
from torchvision import transforms

from common.errors import UserError, first_line
from common.storage import has_extension, read_bytes, resolve_uri
from schemas.images import INTERPOLATIONS, decode_image
from schemas.transform import Preprocess, eval_tensor_from_bytes, to_uint8_tensor
from schemas.views import training_rows

CROPS = ("random-resized", "paper")
# AlexNet's PCA of ImageNet RGB pixels scaled to [0, 1] (eigenvalues; eigenvectors as columns),
# the figures torch's reference ImageNet recipes (fb.resnet.torch) use for its colour augmentation.
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                                [-0.5808, -0.0045, -0.8140],
                                [-0.5836, -0.6948, 0.4203]])


class DataError(UserError):
    """Training data that cannot be used; the message names the folder and the fix."""


def class_folders(url: str) -> list[str]:
    """The sorted names of the class folders under `url`."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        raise DataError(f"data folder {url} does not exist; expect {url}/<class>/<image files>")
    found = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))
    if not found:
        raise DataError(f"{url} has no class folders; expect {url}/<class>/<image files>")
    return found


def list_image_folder(url: str, class_names: list[str] | None = None,
                      owner: str = "the training data") -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folders, or the given order) and (uri, label_index) samples under `url`.

    Given class_names (those of `owner`, e.g. a model's), only their folders are read, each image labelled with
    its class's index there: a subset of the classes is fine (class_differences names what differs for the
    caller to report); no class in common is a DataError listing the differences.
    """
    fs, root = fsspec.core.url_to_fs(url)
    folders = class_folders(url)
    classes = class_names or folders
    if not set(folders) & set(classes):
        raise DataError(f"the classes of {url} differ from {owner}'s: {class_differences(folders, classes)}")
    samples = []
    for index, name in enumerate(classes):
        if name not in folders:
            continue
        files = sorted(p for p in fs.find(f"{root}/{name}") if has_extension(p))
        if not files:
            raise DataError(f"class folder {url}/{name} has no images; add images or remove the folder")
        samples += [(fs.unstrip_protocol(p), index) for p in files]
    return classes, samples


def class_differences(folders: list[str], class_names: list[str]) -> str:
    """The classes that have no folder and the folders of no class, for one-line messages; empty if none."""
    missing = [name for name in class_names if name not in folders]
    extra = [name for name in folders if name not in class_names]
    return "; ".join(f"{what} {listing(names)}" for what, names in (("missing", missing), ("extra", extra)) if names)


def listing(names: list[str], limit: int = 10) -> str:
    """Names for a one-line message: a thousand ImageNet classes would not be one."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_manifest(url: str, decision: str | None = None) -> list[tuple[str, str]]:
    """(uri, label) rows of a CSV file, a Parquet file or folder such as a labels table, or a labeling output.

    Relative uris are taken relative to the manifest's folder (as in the sample set's bucket_truth.csv);
    `decision` keeps only the rows with that decision (labels tables mark rows accept or review). An output
    folder of `alexlabel label` gives what `alexlabel export` would: a person's label over the model's, rows
    marked unusable left out, and people's rows whatever the decision.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise DataError(f"manifest {url} does not exist; pass a CSV or Parquet file (or folder) of uri,label")
    if fs.isdir(path) and fs.exists(f"{path}/runs"):
        if not (rows := training_rows(url, decision=decision)):
            raise DataError(f"output {url} has no rows to train on" + (f" with decision {decision!r}" if decision
                                                                       else ""))
        return [(uri, label) for uri, label, *_ in rows]
    try:
        if path.lower().endswith(".csv"):
            with fs.open(path, "rb") as f:
                table = pyarrow.csv.read_csv(f)
        else:
            table = pyarrow.dataset.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"manifest {url} is not a readable CSV or Parquet table ({first_line(e)})") from None
    needed = ["uri", "label"] + (["decision"] if decision else [])
    if missing := [c for c in needed if c not in table.column_names]:
        raise DataError(f"manifest {url} has no column {', '.join(missing)} (it has {', '.join(table.column_names)})"
                        + ("; drop --decision for tables without decisions" if "decision" in missing else ""))
    rows = table.select(needed).to_pylist()
    out = [(resolve_uri(r["uri"], url), str(r["label"])) for r in rows if not decision or r["decision"] == decision]
    if not out:
        raise DataError(f"manifest {url} has no rows" + (f" with decision {decision!r}" if decision else ""))
    return out


def manifest_samples(url: str, class_names: list[str] | None = None,
                     decision: str | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted unique labels, or the given order) and (uri, label_index) samples of a manifest."""
    rows = read_manifest(url, decision)
    classes = class_names or sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(classes)}
    if unknown := sorted({label for _, label in rows} - index.keys()):
        raise DataError(f"manifest {url} has labels the training data lacks: {', '.join(unknown[:5])}; "
                        "validate on the training classes only")
    return classes, [(uri, index[label]) for uri, label in rows]


def train_transform(pre: Preprocess, crop: str = "random-resized"):
    """Random crop and horizontal flip of a PIL image, to a uint8 tensor of pre.crop x pre.crop.

    `paper`: AlexNet's: shorter side to pre.resize (256), then a random pre.crop (224) square.
    `random-resized`: a random 50-100% area and aspect, resized to pre.crop (Inception style).
    """
    mode = _torchvision_mode(pre)
    cropping = ([transforms.Resize(pre.resize, interpolation=mode), transforms.RandomCrop(pre.crop)]
                if crop == "paper" else [transforms.RandomResizedCrop(pre.crop, scale=(0.5, 1.0), interpolation=mode)])
    return transforms.Compose([*cropping, transforms.RandomHorizontalFlip(), to_uint8_tensor])


def pca_lighting(batch: torch.Tensor, std: tuple[float, float, float], alpha_std: float) -> torch.Tensor:
    """AlexNet's colour augmentation, on a batch already normalized by Preprocess.normalize.

    The paper adds eigvec @ (alpha * eigval), alpha ~ N(0, alpha_std), to every RGB pixel (in [0, 1]) of an
    image. Normalization is (x - mean) / std, so adding shift / std afterwards is exactly that, in float:
    on the uint8 tensors the shift (about 1/255) would be rounded away and clipped. alpha comes from
    torch's global RNG on the CPU, which last.pt saves, so it is the same on every device and on resume.
    """
    alpha = torch.randn(len(batch), 3) * alpha_std
    shift = (alpha * IMAGENET_EIGVAL) @ IMAGENET_EIGVEC.T / torch.tensor(std)
    return batch + shift.to(batch.device, batch.dtype).view(-1, 3, 1, 1)


def _torchvision_mode(pre: Preprocess):
    return transforms.InterpolationMode(Image.Resampling(INTERPOLATIONS[pre.interpolation]).name.lower())


class ImageDataset(torch.utils.data.Dataset):
    """(uri, label) samples -> (uint8 CHW tensor, label), or None for an unreadable image.

    A key is an index, or (index, seed) from EpochSampler: the random transform then draws from that
    seed alone, whichever worker (or the main process) decodes the image.
    """

    def __init__(self, samples: list[tuple[str, int]], transform, min_side: int, eval_pre: Preprocess | None = None):
        self.samples, self.transform, self.min_side, self.eval_pre = samples, transform, min_side, eval_pre

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        uri, label = self.samples[i]
        try:
            if self.eval_pre:  # evaluation: exactly the labeling pipeline's bytes-to-tensor path
                return eval_tensor_from_bytes(read_bytes(uri), self.eval_pre)[0], label
            data = read_bytes(uri)
        except Exception:  # a broken image costs one sample, not the run; collate counts it
            return None
        return train_tensor(data, label, self.transform, self.min_side, seed)


def train_tensor(data: bytes, label: int, transform, min_side: int, seed: int | None):
    """(augmented uint8 tensor, label) of an image's bytes, or None if they do not decode. With a seed, the random
    transform draws from that seed alone, whichever worker (or the main process) decodes the image."""
    try:
        img = decode_image(data, min_side)[0]
        if seed is None:
            return transform(img), label
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG (dropout, lighting) untouched
            torch.default_generator.manual_seed(seed)  # the CPU generator only: transforms draw from it
            return transform(img), label
    except Exception:  # a broken image costs one sample, not the run; collate counts it
        return None


class EpochSampler(torch.utils.data.Sampler):
    """Batches of (index, augmentation seed) whose order and seeds are a function of (seed, epoch) alone.

    So a resumed run, even one resumed mid-epoch, sees exactly the batches and crops an uninterrupted
    run would have seen, with any number of workers. With `world` processes, rank r takes every world-th
    sample of each batch, as DistributedSampler would: together they see one process's batches, and every
    process gets the same number of batches (a share may be short, or empty), so none waits on the others.
    """

    def __init__(self, size: int, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.batch_size, self.rank, self.world = size, seed, batch_size, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate `epoch`'s batches from its `start`-th batch on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size) - self.start

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # distinct per (seed, epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(2**62, (self.size,), generator=generator).tolist()
        keys = list(zip(order, seeds, strict=True))
        for first in range(self.start * self.batch_size, self.size, self.batch_size):
            yield keys[first:first + self.batch_size][self.rank::self.world]


def collate(items):
    """Stack the readable items; the third value counts the unreadable ones that were dropped."""
    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), len(items)
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), len(items) - len(good)


def eval_loader(samples, pre: Preprocess, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """Evaluation batches, prepared by the same function the labeling pipeline uses."""
    return _data_loader(ImageDataset(samples, None, pre.resize, eval_pre=pre), workers, {"batch_size": batch_size})


def loader(samples, transform, min_side: int, batch_size: int, workers: int,
           batch_sampler: EpochSampler | None = None) -> torch.utils.data.DataLoader:
    """Batches of batch_size in sample order, or the batch sampler's batches.

    The loader's own generator seeds the workers (torch seeds their torch, random and numpy RNGs from it),
    so starting an epoch draws nothing from torch's global RNG, which last.pt saves and restores.
    """
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return _data_loader(ImageDataset(samples, transform, min_side), workers, batching)


def _data_loader(dataset: "ImageDataset", workers: int, batching: dict) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, num_workers=workers, collate_fn=collate, generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), **batching)
