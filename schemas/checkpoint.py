"""The checkpoint contract: weights plus a plain-JSON manifest that carries everything inference needs.

A checkpoint file is `torch.save({"format_version", "manifest": <JSON text>, "state_dict"})` and is
always read with `torch.load(..., weights_only=True)`: a checkpoint from a bucket is untrusted input,
and unpickling arbitrary objects would run its code.

A checkpoint may also carry an embedding projection (`label --embeddings`): a PCA of the network's penultimate
activations, fitted by the trainer on its training set, by `import-weights --fit-on` (--fit-pca) or by `refit`. Its two
tensors sit in the state dict under EMBEDDING_KEYS, so the weights hash (the model version) covers them: embeddings
of two different projections never share a version. The manifest's `embedding` says how it was fitted.

The same holds for the int8 activation ranges (`label --precision int8`), fitted with the projection, on the same
images: they sit in the state dict under INT8_KEY, and the manifest's `int8` says how they were fitted.
"""
import hashlib
import io
import json
import pickle
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import fsspec
import torch

from common.errors import UserError
from common.storage import atomic_write_bytes, read_bytes
from schemas.transform import Preprocess

FORMAT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins (a zip archive)
# What the trainer's resume checkpoint (last.pt) always holds, and an inference checkpoint never does.
TRAINING_STATE_KEYS = frozenset({"model", "optimizer", "state", "rng"})
EMBEDDING_KEYS = ("embedding.mean", "embedding.components")  # [F] and [F, D], float32, in the state dict
# [units, 2] float64: each quantization unit's output (scale, zero point); NaN where a unit keeps its input's.
INT8_KEY = "int8.activations"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Manifest:
    arch: str
    class_names: list[str]
    preprocess: Preprocess
    arch_kwargs: dict = field(default_factory=dict)
    temperature: float = 1.0
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    embedding: dict = field(default_factory=dict)  # dim, features, fitted_on, explained_variance, source
    int8: dict = field(default_factory=dict)  # fitted_on, source

    @property
    def model_version(self) -> str:
        """Short weights hash stamped on every output row."""
        return self.weights_sha256[:12]

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format_version {d.get('format_version')!r} is not supported "
                                  f"(this alexlabel reads version {FORMAT_VERSION}); upgrade alexlabel or re-export")
        d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        return cls(**d)


@dataclass(frozen=True)
class Projection:
    """The PCA that turns penultimate activations [N, F] into embeddings [N, D]: (x - mean) @ components."""

    mean: torch.Tensor
    components: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "Projection":
        return Projection(self.mean.to(device, dtype), self.components.to(device, dtype))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) @ self.components


def split_state(state_dict: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], Projection | None, torch.Tensor | None]:
    """The network's own weights, the embedding projection and the int8 ranges, each None where the checkpoint has
    none; ValueError for a projection that is half there or whose shapes do not fit together, or broken ranges."""
    weights = {k: v for k, v in state_dict.items() if k not in (*EMBEDDING_KEYS, INT8_KEY)}
    int8 = state_dict.get(INT8_KEY)
    if int8 is not None and (int8.dim() != 2 or int8.shape[1] != 2):
        raise ValueError(f"its int8 ranges are broken ({INT8_KEY} {tuple(int8.shape)})")
    found = [state_dict[k] for k in EMBEDDING_KEYS if k in state_dict]
    if not found:
        return weights, None, int8
    if len(found) < len(EMBEDDING_KEYS) or found[0].dim() != 1 or found[1].dim() != 2 \
            or found[1].shape[0] != found[0].shape[0]:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in zip(EMBEDDING_KEYS, found, strict=False))
        raise ValueError(f"its embedding projection is broken ({shapes})")
    return weights, Projection(*found), int8


def with_fitted(weights: dict[str, torch.Tensor], projection: Projection | None,
                int8: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The network's weights with what was fitted for them, as the state dict a checkpoint stores."""
    fitted = dict(zip(EMBEDDING_KEYS, (projection.mean, projection.components), strict=True)) if projection else {}
    return {**weights, **fitted, **({INT8_KEY: int8} if int8 is not None else {})}


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash names, dtypes, shapes and bytes in key order: equal weights give equal versions."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the buffer itself: no 240 MB copy
    return h.hexdigest()


def save_checkpoint(url: str, state_dict: dict[str, torch.Tensor], manifest: Manifest,
                    also: Sequence[str] = ()) -> Manifest:
    """Atomically write an inference checkpoint (the same bytes to each of `also` too: hashed and
    serialized once); returns the manifest with its weights hash filled in."""
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    manifest = replace(manifest, weights_sha256=weights_sha256(state_dict))
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "manifest": manifest.to_json(), "state_dict": state_dict}, buf)
    for target in (url, *also):
        atomic_write_bytes(target, buf.getvalue())
    return manifest


def sibling(url: str, name: str) -> str:
    """The file `name` in the same folder as `url`, on any fsspec URL (gs://b/run/last.pt -> gs://b/run/model.pt)."""
    folder, slash, _ = url.rpartition("/")
    return f"{folder}{slash}{name}"


def refit_advice(checkpoint: str) -> str:
    """The command that fits what a checkpoint lacks (projection, int8 ranges), to copy from an error line: its path
    quoted for a shell."""
    return f"alexlabel refit {shlex.quote(checkpoint)} --fit-on FOLDER --output NEW.pt"


def checkpoint_file(url: str) -> str:
    """The file a --checkpoint names: `url` itself, or for a folder the model.pt in it (what `alexlabel train
    --output DIR` writes). It prints nothing: the commands say which file they use, once."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        return url
    inside = f"{url.rstrip('/')}/model.pt"
    if not fs.isfile(f"{path.rstrip('/')}/model.pt"):
        raise CheckpointError(f"checkpoint {url} is a folder with no model.pt in it; pass the model.pt that "
                              "`alexlabel train` or `alexlabel import-weights` wrote")
    return inside


def announced_checkpoint_file(url: str) -> str:
    """checkpoint_file, for the commands (`label`, `evaluate`): a folder's model.pt is named on stderr. Said by them
    alone, not where checkpoints load, which is also in workers, subprocesses and tools."""
    path = checkpoint_file(url)
    if path != url:
        print(f"using {path}", file=sys.stderr, flush=True)
    return path


def load_checkpoint(url: str) -> tuple[dict[str, torch.Tensor], Manifest]:
    """Safely load and validate a checkpoint; every failure is one CheckpointError line.

    Torch's own messages are not passed on: for a refused file they advise loading it with weights_only=False,
    which would run whatever code it holds."""
    url = checkpoint_file(url)
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {url} does not exist; pass the model.pt that `alexlabel train` wrote"
                              ) from None
    try:
        if not data.startswith(ZIP_MAGIC):  # torch would read it as an old-style pickle, and call it unsafe
            raise ValueError("not a zip archive")
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint {url} holds objects other than tensors and was refused (unpickling them "
                              "could run code from the file); only load checkpoints that `alexlabel train` or "
                              "`alexlabel import-weights` wrote") from None
    except Exception:
        raise CheckpointError(f"checkpoint {url} is not a checkpoint (truncated or not a torch file); pass the "
                              "model.pt that `alexlabel train` or `alexlabel import-weights` wrote, or re-copy it"
                              ) from None
    if isinstance(obj, dict) and "manifest" not in obj and TRAINING_STATE_KEYS <= obj.keys():
        raise CheckpointError(f"checkpoint {url} is a training checkpoint (for `alexlabel train --resume`), not an "
                              f"inference one; use {sibling(url, 'model.pt')} beside it")
    if not isinstance(obj, dict) or "manifest" not in obj or "state_dict" not in obj:
        raise CheckpointError(f"checkpoint {url} has no alexlabel manifest; wrap plain state dicts with "
                              "`alexlabel import-weights`")
    try:
        manifest = Manifest.from_json(obj["manifest"])
    except CheckpointError as e:
        raise CheckpointError(f"{url}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {url} has an invalid manifest ({e}); re-export it") from None
    state_dict = obj["state_dict"]
    if manifest.weights_sha256 != weights_sha256(state_dict):
        raise CheckpointError(f"checkpoint {url}: weights do not match the manifest's weights_sha256; "
                              "the file is corrupt, re-copy or re-export it")
    return state_dict, manifest
