"""Train an AlexNet classifier on DATA/train/<class>/ and DATA/val/<class>/, read top to bottom.

Writes under OUTPUT: last.pt (full training state, for --resume), model.pt (the best epoch by val
top-1, as an inference checkpoint per schemas.checkpoint, temperature-calibrated) and metrics.jsonl.
"""
import io
import json
import math
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import torch
import torchvision
from tqdm import tqdm

from schemas.checkpoint import Manifest, load_checkpoint, save_checkpoint
from schemas.errors import UserError
from schemas.preprocess import Preprocess
from schemas.storage import atomic_write_bytes, read_bytes
from trainer.calibrate import expected_calibration_error, fit_temperature
from trainer.data import list_image_folder, loader, train_transform
from trainer.evaluate import accuracy_report, predict
from trainer.models import build_model


@dataclass
class TrainConfig:
    data: str                      # folder or bucket URL holding train/<class>/ and val/<class>/
    output: str                    # where last.pt, model.pt and metrics.jsonl go
    arch: str = "alexnet"
    arch_kwargs: dict = field(default_factory=dict)
    image_size: int = 224          # center crop at eval, random-resized crop in training
    resize: int = 0                # eval resize of the shorter side; 0 means image_size * 256 / 224
    epochs: int = 90
    batch_size: int = 128
    optimizer: str = "sgd"         # sgd (paper: momentum 0.9, weight decay 5e-4) or adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "auto"              # auto (bf16 on CUDA, off on CPU), bf16, off
    channels_last: bool = True
    device: str = "auto"           # auto, cpu, cuda
    workers: int = 2
    seed: int = 0
    resume: bool = False


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train(cfg: TrainConfig) -> Manifest:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg.device)
    dtype = amp_dtype(cfg, device)
    pre = Preprocess(resize=cfg.resize or round(cfg.image_size * 256 / 224), crop=cfg.image_size)
    classes, train_samples = list_image_folder(f"{cfg.data}/train")
    _, val_samples = list_image_folder(f"{cfg.data}/val", classes)
    train_loader = loader(train_samples, train_transform(pre), pre.resize, cfg.batch_size, True, cfg.workers, cfg.seed)
    val_loader = loader(val_samples, pre.eval_tensor, pre.resize, cfg.batch_size, False, cfg.workers, cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    model = build_model(cfg.arch, len(classes), **cfg.arch_kwargs).to(device, memory_format=memory_format)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    state = {"epoch": 0, "best_top1": -1.0, "run_id": uuid.uuid4().hex[:12], "metrics": []}
    if cfg.resume:
        state = resume(cfg.output, model, optimizer, scheduler)
    best = None
    print(f"training {cfg.arch} on {len(train_samples)} images, {len(classes)} classes, {device}"
          f"{' bf16' if dtype else ''}; validating on {len(val_samples)}")

    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        seen, skipped, t0 = 0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=None)
        for x, y, bad in bar:
            skipped += bad
            if not len(y):
                continue
            x = pre.normalize(x.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2g}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        logits, labels = predict(model, val_loader, pre, device, dtype)
        report = accuracy_report(logits, labels, classes)
        row = {"epoch": epoch + 1, "loss": loss.item(), "val_top1": report["top1"], "val_top5": report["top5"],
               "lr": scheduler.get_last_lr()[0], "images_per_second": seen / (time.perf_counter() - t0),
               "skipped_images": skipped}
        state["metrics"].append(row)
        print(f"epoch {row['epoch']}/{cfg.epochs}: loss {row['loss']:.3f}  val top-1 {row['val_top1']:.3f}  "
              f"top-5 {row['val_top5']:.3f}  lr {row['lr']:.2g}  {row['images_per_second']:.0f} img/s"
              + (f"  ({skipped} unreadable images skipped)" if skipped else ""))
        if report["top1"] > state["best_top1"]:
            state["best_top1"] = report["top1"]
            best = export(cfg, model, classes, pre, logits, labels, report, state["run_id"])
        state["epoch"] = epoch + 1
        save_training_state(cfg.output, model, optimizer, scheduler, state)
        metrics_lines = "".join(json.dumps(r) + "\n" for r in state["metrics"])
        atomic_write_bytes(f"{cfg.output}/metrics.jsonl", metrics_lines.encode())
    return best or load_checkpoint(f"{cfg.output}/model.pt")[1]


def export(cfg, model, classes, pre, logits, labels, report, run_id) -> Manifest:
    """Write model.pt: weights, the inference contract, calibrated temperature, metrics, provenance."""
    temperature = fit_temperature(logits, labels)
    metrics = {"val_top1": report["top1"], "val_top5": report["top5"], "val_images": report["images"],
               "val_data": f"{cfg.data}/val", "ece_before": expected_calibration_error(logits, labels),
               "ece_after": expected_calibration_error(logits, labels, temperature)}
    manifest = Manifest(
        arch=cfg.arch, arch_kwargs=cfg.arch_kwargs, class_names=list(classes), preprocess=pre,
        temperature=temperature, metrics=metrics,
        provenance={"torch": torch.__version__, "torchvision": torchvision.__version__, "recipe": asdict(cfg),
                    "created_at": datetime.now(UTC).isoformat(), "run_id": run_id})
    state_dict = {k: v for k, v in model.state_dict().items()}
    return save_checkpoint(f"{cfg.output}/model.pt", state_dict, manifest)


def save_training_state(output: str, model, optimizer, scheduler, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "state": json.dumps(state)}, buf)
    atomic_write_bytes(f"{output}/last.pt", buf.getvalue())


def resume(output: str, model, optimizer, scheduler) -> dict:
    saved = torch.load(io.BytesIO(read_bytes(f"{output}/last.pt")), map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return json.loads(saved["state"])
