"""What a training run writes and reads back under --output: model.pt and the best epochs (inference
checkpoints, calibrated), model.pt's embedding projection and int8 ranges, last.pt (the whole training state, for
an exact --resume), and their clean-up."""
import io
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime

import fsspec
import torch
import torchvision

from common.errors import UserError, first_line
from common.storage import atomic_write_bytes, read_bytes
from schemas.checkpoint import Manifest, Projection, load_checkpoint, save_checkpoint, split_state, with_fitted
from schemas.shards import ShardSet
from trainer import distributed
from trainer.calibrate import expected_calibration_error, fit_temperature
from trainer.distributed import World
from trainer.embedding import fit_projection
from trainer.int8_ranges import fit_int8_ranges
from trainer.models import build_model


def rank_best(kept: list, candidate: list, k: int) -> tuple[list, list[str]]:
    """The k best [file name, top1] pairs, ties kept in epoch order, and the kept files that fell out."""
    ranked = sorted([*kept, candidate], key=lambda pair: -pair[1])
    return ranked[:k], [name for name, _ in ranked[k:] if name != candidate[0]]


def export(cfg, model, classes, pre, logits, labels, report, run_id, names: list[str]) -> Manifest:
    """Write OUTPUT/<name> for each name: weights, the inference contract, calibrated temperature, metrics,
    provenance."""
    temperature = fit_temperature(logits, labels)
    metrics = {"val_top1": report["top1"], "val_top5": report["top5"], "val_images": report["images"],
               "val_data": cfg.val_manifest or cfg.val_data or f"{cfg.data}/val",
               "ece_before": expected_calibration_error(logits, labels),
               "ece_after": expected_calibration_error(logits, labels, temperature)}
    manifest = Manifest(
        arch=cfg.arch, arch_kwargs=cfg.arch_kwargs, class_names=list(classes), preprocess=pre,
        temperature=temperature, metrics=metrics,
        provenance={"torch": torch.__version__, "torchvision": torchvision.__version__, "recipe": asdict(cfg),
                    "created_at": datetime.now(UTC).isoformat(), "run_id": run_id})
    state_dict = model.state_dict()
    first, *others = [f"{cfg.output}/{name}" for name in names]
    return save_checkpoint(first, state_dict, manifest, also=others)


def add_fitted(url: str, images: list[str] | ShardSet, dim: int, source: str, also: Sequence[str] = (),
               **fit_options) -> Manifest:
    """Rewrite the checkpoint at `url` (and its copies `also`) with what `fitted` fits for its own weights on
    `images` and it lacks; returns the new manifest. Read back from the file, not taken from the training loop,
    whose model has moved on since its best epoch (or, on --resume, never held it)."""
    state_dict, manifest = load_checkpoint(url)
    weights, projection, int8 = split_state(state_dict)
    module = build_model(manifest.arch, len(manifest.class_names), weights, **manifest.arch_kwargs)
    state_dict, manifest = fitted(module, manifest, images, dim, source, projection, int8, **fit_options)
    return save_checkpoint(url, state_dict, manifest, also=also)


def fitted(module: torch.nn.Module, manifest: Manifest, images: list[str] | ShardSet, dim: int, source: str,
           projection: Projection | None = None, int8: torch.Tensor | None = None, *, device: torch.device,
           amp_dtype: torch.dtype | None = None, batch_size: int = 128, workers: int = 0,
           seed: int = 0) -> tuple[dict[str, torch.Tensor], Manifest]:
    """The state dict and manifest of `module` with what labeling uses fitted on `images` where not given: the
    embedding projection (with dim > 0), and the int8 ranges."""
    weights = module.state_dict()
    options = {"source": source, "device": device, "batch_size": batch_size, "workers": workers, "seed": seed}
    if dim and projection is None:
        projection, info = fit_projection(module, images, manifest.preprocess, dim, amp_dtype=amp_dtype, **options)
        manifest = replace(manifest, embedding=info)
    if int8 is None:
        int8, info = fit_int8_ranges(module, images, manifest.preprocess, **options)
        manifest = replace(manifest, int8=info)
    return with_fitted(weights, projection, int8), manifest


def twins(output: str, kept: list, manifest: Manifest) -> list[str]:
    """The kept best-epoch file that holds model.pt's bytes, as a list: the first kept, written with it, unless
    --keep-best changed on a resume; so its hash is checked, not assumed."""
    if not kept:
        return []
    url = f"{output}/{kept[0][0]}"
    return [url] if load_checkpoint(url)[1].weights_sha256 == manifest.weights_sha256 else []


def clear_previous_run(output: str) -> None:
    """--overwrite: the earlier run's files go before this one writes any. Else its best-epoch files would stay
    forever, and until this run's first epoch ended its model.pt would sit beside the new last.pt: a mixed folder
    after a crash, whose stale model `label --checkpoint DIR` would take."""
    fs, root = fsspec.core.url_to_fs(output)
    remove(output, ["model.pt", "last.pt", "metrics.jsonl",
                    *(path.rpartition("/")[2] for path in fs.glob(f"{root}/best-epoch*.pt"))])


def remove(output: str, names: list[str]) -> None:
    fs, root = fsspec.core.url_to_fs(output)
    for name in names:
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}")


def save_training_state(output: str, resumable: dict, state: dict, world: World) -> None:
    """last.pt: what an exact resume needs, down to every process's RNGs and the position in the epoch."""
    rngs = distributed.all_gather({
        "torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
    if not world.main:
        return
    buf = io.BytesIO()
    torch.save({**{name: part.state_dict() for name, part in resumable.items() if part is not None},
                "rng": rngs, "state": json.dumps(state)}, buf)
    atomic_write_bytes(f"{output}/last.pt", buf.getvalue())


def resume(output: str, resumable: dict, world: World) -> dict:
    """Load last.pt into the model, optimizer, schedulers and scaler, restore the RNGs; returns the loop state."""
    try:
        saved = torch.load(io.BytesIO(read_bytes(f"{output}/last.pt")), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--resume: {output}/last.pt does not exist; train without --resume first") from None
    try:
        if len(saved["rng"]) != world.size:
            raise ValueError(f"it was written by {len(saved['rng'])} processes, this run has {world.size}")
        for name, part in resumable.items():
            if part is not None:
                part.load_state_dict(saved[name])
        rng = saved["rng"][world.rank]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        version, internal, gauss = json.loads(rng["python"])
        random.setstate((version, tuple(internal), gauss))
        return json.loads(saved["state"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"--resume: {output}/last.pt does not fit this run's options ({first_line(e)}); "
                        "resume with the options it was trained with") from None
