"""Wrap a plain state dict, such as torchvision's published ImageNet AlexNet weights, into a checkpoint, with the
embedding projection and the int8 ranges fitted on a folder of images if asked (`--fit-on`): imported weights have
no training set of ours to fit them on. `refit` fits them anew for a checkpoint that has or lacks them."""
import hashlib
import io
import pickle
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import fsspec
import torch
import torchvision

from common.devices import pick_device
from common.errors import UserError
from common.storage import IMAGE_EXTENSIONS, as_url, canonical_uri, has_extension, read_bytes
from schemas.checkpoint import Manifest, save_checkpoint
from schemas.transform import Preprocess
from trainer.checkpoints import fitted
from trainer.embedding import DIM
from trainer.models import build_model, load_model

IMAGENET_EVAL = Preprocess(resize=256, crop=224)  # torchvision's AlexNet recipe: bilinear, ImageNet mean/std


def read_class_names(url: str) -> list[str]:
    """One class name per line, in logit order; blank lines are ignored."""
    try:
        text = read_bytes(url).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"classes file {url} does not exist; write one class name per line, in logit order") from None
    except UnicodeDecodeError:
        raise UserError(f"classes file {url} is not UTF-8 text; write one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"classes file {url} is empty; write one class name per line, in logit order")
    if repeated := sorted(name for name, n in Counter(names).items() if n > 1):
        raise UserError(f"classes file {url} repeats {', '.join(repeated[:5])}; class names must be unique")
    return names


def read_state_dict(url: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a state dict file, loaded without unpickling code, and the file's sha256."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise UserError(f"state dict {url} does not exist; pass the .pth file to import") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"state dict {url} holds objects other than tensors and was refused (weights_only load); "
                        "save model.state_dict() itself") from None
    except Exception as e:
        raise UserError(f"state dict {url} is truncated or not a torch file ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{url} is not a state dict (parameter names -> tensors); save model.state_dict() itself")
    return obj, hashlib.sha256(data).hexdigest()


def folder_images(url: str) -> list[str]:
    """The image files anywhere under `url`, sorted, spelled as the tables spell uris."""
    fs, root = fsspec.core.url_to_fs(url)
    images = [as_url(fs, path) for path in sorted(fs.find(root)) if has_extension(path)]
    if not images:
        raise UserError(f"--fit-on {url} holds no images ({', '.join(IMAGE_EXTENSIONS)}); give a folder of images "
                        "like those you will label")
    return images


def import_weights(state_dict_url: str, arch: str, classes_url: str, output: str,
                   preprocess: Preprocess = IMAGENET_EVAL, fit_on: str = "", embedding_dim: int = DIM) -> Manifest:
    """Check the weights fit `arch` with the listed classes, then write them as a checkpoint at `output`, with
    the embedding projection and the int8 ranges fitted on the images under `fit_on` if given (listed first: an
    empty folder is found before any work)."""
    class_names = read_class_names(classes_url)
    images = folder_images(fit_on) if fit_on else []
    state_dict, source_sha256 = read_state_dict(state_dict_url)
    with torch.device("meta"):  # only the parameter names and shapes, nothing allocated
        head = [k for k in build_model(arch, len(class_names)).state_dict() if k.endswith(".weight")][-1]
    if head in state_dict and state_dict[head].shape[0] != len(class_names):
        raise UserError(f"{classes_url} lists {len(class_names)} classes but the weights' final layer ({head}) has "
                        f"{state_dict[head].shape[0]} outputs; list exactly one class name per output")
    try:
        model = build_model(arch, len(class_names), state_dict)
    except ValueError as e:
        raise UserError(f"state dict {state_dict_url}: {e}") from None
    manifest = Manifest(
        arch=arch, class_names=class_names, preprocess=preprocess, temperature=1.0,
        provenance={"imported_from": state_dict_url, "source_sha256": source_sha256, "classes_file": classes_url,
                    "torch": torch.__version__, "torchvision": torchvision.__version__,
                    "created_at": datetime.now(UTC).isoformat()})
    weights = model.state_dict()
    if fit_on:
        weights, manifest = fitted(model, manifest, images, embedding_dim, fit_on, **fit_here())
    return save_checkpoint(output, weights, manifest)


def refit(checkpoint: str, output: str, fit_on: str, dim: int | None = None) -> Manifest:
    """The checkpoint written to `output` with its embedding projection and int8 ranges fitted anew on the images
    under `fit_on`, whatever it had: the same network, classes and calibration. Its provenance lists the refits
    that made it, each naming the checkpoint and version it started from. `dim` None: the checkpoint's own, else
    DIM."""
    images = folder_images(fit_on)  # an empty folder is found before the model loads
    module, manifest, _, _ = load_model(checkpoint)
    refits = [*manifest.provenance.get("refits", []), {"checkpoint": canonical_uri(checkpoint),
                                                       "model_version": manifest.model_version,
                                                       "at": datetime.now(UTC).isoformat()}]
    manifest = replace(manifest, provenance={**manifest.provenance, "refits": refits})
    dim = manifest.embedding.get("dim", DIM) if dim is None else dim
    weights, manifest = fitted(module, manifest, images, dim, fit_on, **fit_here())
    return save_checkpoint(output, weights, manifest)


def fit_here() -> dict:
    """How a command fits the projection and ranges: on this machine's fastest device, in bf16 on CUDA (as `label`
    runs there)."""
    device = pick_device("auto")
    return {"device": device, "workers": 2, "amp_dtype": torch.bfloat16 if device.type == "cuda" else None}
