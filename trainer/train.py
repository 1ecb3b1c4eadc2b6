"""Train an AlexNet classifier, read top to bottom.

Data: DATA/train/ and DATA/val/, each a tree of <class>/ image folders or WebDataset shards (trainer/shards.py),
or two (uri, label) manifests in CSV or Parquet, such as a labels table filtered to its accepted rows.
Writes under OUTPUT:
- last.pt: the full training state (weights, optimizer, schedules, AMP scaler, RNGs, position in the
  epoch) at each epoch end and every save_every_steps batches; --resume continues from it exactly;
- model.pt: the best epoch by val top-1, as an inference checkpoint (schemas.checkpoint), calibrated, with
  the embedding projection and int8 ranges fitted on the training set once the run ends;
- best-epochNNN-top1-X.XXX.pt: the keep_best best epochs, in the same format;
- metrics.jsonl: one row per epoch.
Every file is written atomically (common.storage), so a crash leaves the previous version readable; what
is in them is trainer/checkpoints.py's, the options trainer/config.py's.

Data-parallel (torchrun, or `alexlabel train --nproc N`; see trainer.distributed): --batch-size is the
global batch, split across the processes, so a recipe means the same steps at any process count. Each
process validates its share of the val set and the logits are gathered, so every process holds the same
metrics (the plateau schedule and the best-epoch choice agree) and rank 0 calibrates on all of them.
"""
import json
import math
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR, LinearLR, LRScheduler, ReduceLROnPlateau
from tqdm import tqdm

from common.errors import UserError
from common.interrupt import Interrupted, ctrl_c_sets
from common.storage import atomic_write_bytes
from schemas.checkpoint import Manifest, load_checkpoint
from schemas.shards import ShardSet, is_shard_set
from schemas.transform import Preprocess
from trainer import distributed
from trainer.calibrate import calibration_warning
from trainer.checkpoints import (
    add_fitted,
    clear_previous_run,
    export,
    rank_best,
    remove,
    resume,
    save_training_state,
    twins,
)
from trainer.config import TrainConfig
from trainer.data import EpochSampler, manifest_samples, pca_lighting, train_transform
from trainer.distributed import World
from trainer.evaluate import accuracy_report, predict
from trainer.models import build_model
from trainer.shards import Images, ShardStream, eval_batches, image_count, image_set, train_batches

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def warn(message: str) -> None:
    """One line on stderr about a choice or a result that is likely wrong; training goes on."""
    print(f"warning: {message}", file=sys.stderr)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, None for fp32: `auto` is bf16 on CUDA, where it is fast and needs no scaler."""
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES.get(cfg.amp)


def training_data(cfg: TrainConfig) -> tuple[list[str], Images, Images]:
    """Classes and the train and val images: (uri, label_index) samples of image folders or manifests, or shards."""
    manifests = bool(cfg.data_manifest or cfg.val_manifest)
    if bool(cfg.data) == manifests or (manifests and not (cfg.data_manifest and cfg.val_manifest)):
        raise UserError("give either --data DIR (with train/ and val/) or both --data-manifest and --val-manifest")
    if cfg.data:
        if cfg.decision:
            raise UserError("--decision filters --data-manifest rows; image folders have no decisions")
        if not cfg.val_data and is_shard_set(cfg.data):
            raise UserError(f"--data {cfg.data} is a shard set, the training set itself; give the validation set "
                            "with --val-data")
        train_url, val_url = (cfg.data, cfg.val_data) if cfg.val_data else (f"{cfg.data}/train", f"{cfg.data}/val")
        classes, train_images = image_set(train_url)
        return classes, train_images, image_set(val_url, classes)[1]
    if cfg.val_data:
        raise UserError("--val-data goes with --data; with --data-manifest give --val-manifest")
    classes, train_samples = manifest_samples(cfg.data_manifest, decision=cfg.decision or None)
    return classes, train_samples, manifest_samples(cfg.val_manifest, classes)[1]


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(schedule: str, total_steps: int, warmup_steps: int, step_size: int, gamma: float):
    """LR multiplier at optimizer step `step`: linear warmup, then x gamma every step_size steps, or a half
    cosine from 1 to 0 over the remaining steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "step":
            return gamma ** (step // max(1, step_size))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_schedulers(cfg: TrainConfig, optimizer, steps_per_epoch: int) -> tuple:
    """The per-step scheduler, and for `plateau` the ReduceLROnPlateau to step once per epoch on validation.

    cosine and step are closed-form factors of the step number. plateau chains a LinearLR warmup with
    ReduceLROnPlateau: both multiply the current LR, so a decay during warmup composes, never overwritten.
    """
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "plateau":
        return (LinearLR(optimizer, start_factor=1 / max(1, warmup), total_iters=max(0, warmup - 1)),
                ReduceLROnPlateau(optimizer, mode="min" if cfg.plateau_metric == "val_loss" else "max",
                                  factor=cfg.lr_gamma, patience=cfg.plateau_patience))
    return LambdaLR(optimizer, lr_factor(cfg.schedule, cfg.epochs * steps_per_epoch, warmup,
                                         round(cfg.lr_step_epochs * steps_per_epoch), cfg.lr_gamma)), None


def train(cfg: TrainConfig) -> Manifest | None:
    """Train, export the best epoch; returns model.pt's manifest, or None if stopped before any epoch ended
    (or in a data-parallel process other than rank 0). After Ctrl-C, raises Interrupted once last.pt is saved."""
    cfg.validate()
    world, device = distributed.join(cfg.device)
    try:
        return run(cfg, world, device)
    finally:
        distributed.leave()


def run(cfg: TrainConfig, world: World, device: torch.device) -> Manifest | None:
    """Per epoch: train its steps, stop if asked mid-epoch, validate, record, export the best, save last.pt;
    then fit model.pt's embedding projection, and warn if its temperature is not to be trusted."""
    say = print if world.main else lambda *_: None  # one process reports for all
    t = setup(cfg, world, device)
    state = {"epoch": 0, "step": 0, "best_top1": -1.0, "kept": [], "run_id": uuid.uuid4().hex[:12], "metrics": []}
    if cfg.resume:
        state = resume(cfg.output, t.resumable, world)
        say(f"resuming from {cfg.output}/last.pt at epoch {state['epoch'] + 1}, step {state['step']}")
    best = None
    if world.main:
        warn_slow_choices(cfg, world, device)
    if cfg.overwrite and world.main:
        clear_previous_run(cfg.output)
    # From here Ctrl-C only sets a flag: train_epoch sums it over the processes before each batch, so every
    # process stops at the same step, whole, and last.pt is saved there. A second Ctrl-C only asks again: under
    # --nproc each process gets the terminal's and the launcher's.
    with ctrl_c_sets(t.stop_requested):
        say(f"training {cfg.arch} on {image_count(t.train_images)} images, {len(t.classes)} classes, {device}"
            f"{' ' + str(t.dtype).removeprefix('torch.') if t.dtype else ''}"
            f"{f' x {world.size} processes' if world.size > 1 else ''}; validating on {t.val_images}")
        for epoch in range(state["epoch"], cfg.epochs):
            t.epochs.set_epoch(epoch, start=state["step"])  # mid-epoch resume skips the batches already done
            tally = train_epoch(t, state, epoch)
            if state["step"] < t.steps_per_epoch:
                say(f"stopped after {epoch * t.steps_per_epoch + state['step']} steps, in epoch {epoch + 1}; "
                    "continue with --resume")
                break
            tally = tally.summed(device)
            logits, labels = validate(t.model, t.val_loader, t.pre, device, t.dtype)
            report = accuracy_report(logits, labels, t.classes)
            row = metrics_row(t, epoch, tally, logits, labels, report)
            if t.plateau:
                t.plateau.step(row[cfg.plateau_metric])
            state["metrics"].append(row)
            say(epoch_line(row, cfg.epochs))
            if world.main and (diverging := divergence(state["metrics"])):
                warn(diverging)

            exported, kept, dropped = export_best(t, state, epoch, logits, labels, report)
            best = exported or best
            state.update(epoch=epoch + 1, step=0, best_top1=max(report["top1"], state["best_top1"]), kept=kept)
            save_epoch_end(t, state, dropped)
            if (epoch + 1) * t.steps_per_epoch == cfg.stop_after_steps:
                say(f"stopped after epoch {epoch + 1}; continue with --resume")
                break
    if state["best_top1"] >= 0 and world.main:
        best = fit_for_labeling(t, state, best or load_checkpoint(f"{cfg.output}/model.pt")[1])
    if best and (miscalibrated := calibration_warning(best.temperature, best.metrics)):
        warn(miscalibrated)
    return best


def warn_slow_choices(cfg: TrainConfig, world: World, device: torch.device) -> None:
    """Choices that work but are many times slower on a CPU than the one named (measured: 32 images/s with
    --amp fp16 against 400 with bf16; 15 with --nproc 2)."""
    if device.type != "cpu":
        return
    if cfg.amp == "fp16":
        warn("--amp fp16 is slow on a CPU, which lacks fast fp16 kernels; use --amp bf16")
    if world.local_size > 1:
        warn(f"{world.local_size} training processes on one CPU are slower than one, which already uses every "
             "core; train in one process (leave out --nproc)")


def divergence(metrics: list[dict]) -> str | None:
    """What is wrong if the last epoch's training loss is not finite, or over 3x the first epoch's."""
    loss, first = metrics[-1]["loss"], metrics[0]["loss"]
    if math.isfinite(loss) and not loss > 3 * first:
        return None
    why = f"over 3x epoch 1's ({first:.3g})" if math.isfinite(loss) else "not finite"
    return (f"epoch {metrics[-1]['epoch']} training loss {loss:.3g} is {why}: training is diverging; lower --lr, "
            "or use --optimizer adamw")


@dataclass
class Training:
    """What the steps and the epoch ends share, built once by `setup`."""
    cfg: TrainConfig
    world: World
    device: torch.device
    dtype: torch.dtype | None
    pre: Preprocess
    memory_format: torch.memory_format
    classes: list[str]
    train_images: Images  # the embedding projection is fitted on these
    val_images: int
    epochs: EpochSampler | ShardStream  # set_epoch(epoch, start) picks the batches train_loader makes
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    model: torch.nn.Module      # what is saved and validated
    net: torch.nn.Module        # what trains: `model`, DDP-wrapped when data-parallel
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler      # stepped per applied optimizer step
    plateau: ReduceLROnPlateau | None  # stepped per epoch on validation, for the plateau schedule
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    stop_requested: threading.Event = field(default_factory=threading.Event)  # set by Ctrl-C, see run

    @property
    def resumable(self) -> dict:
        """The parts whose state_dicts last.pt holds, by name."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "plateau": self.plateau, "scaler": self.scaler}


def setup(cfg: TrainConfig, world: World, device: torch.device) -> Training:
    """Data, model, optimizer, schedules and scaler, seeded in this order, which an exact resume relies on."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dtype = amp_dtype(cfg, device)
    pre = Preprocess(resize=cfg.resize or round(cfg.image_size * 256 / 224), crop=cfg.image_size)
    classes, train_images, val_images = training_data(cfg)
    if world.size > min(cfg.batch_size, image_count(val_images)):
        raise UserError(f"{world.size} processes need --batch-size and the val set to be at least {world.size}")
    epochs, train_loader, steps_per_epoch = train_batches(train_images, train_transform(pre, cfg.crop), pre.resize,
                                                          cfg.batch_size, cfg.seed, cfg.workers, world.rank,
                                                          world.size)
    val_loader = eval_batches(val_images, pre, cfg.batch_size, cfg.workers, world.rank, world.size)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    model = build_model(cfg.arch, len(classes), **cfg.arch_kwargs).to(device, memory_format=memory_format)
    if world.rank:  # the same initial weights everywhere, then each process its own dropout and lighting noise
        torch.manual_seed(cfg.seed + world.rank)
        random.seed(cfg.seed + world.rank)
    if cfg.compile:
        model.compile()  # in place, so state_dict keys stay those of the plain model
    net = distributed.replicate(model, device)
    optimizer = make_optimizer(cfg, model)
    scheduler, plateau = make_schedulers(cfg, optimizer, steps_per_epoch)
    return Training(
        cfg=cfg, world=world, device=device, dtype=dtype, pre=pre, memory_format=memory_format, classes=classes,
        train_images=train_images, val_images=image_count(val_images), epochs=epochs, train_loader=train_loader,
        val_loader=val_loader, steps_per_epoch=steps_per_epoch, model=model, net=net, optimizer=optimizer,
        scheduler=scheduler, plateau=plateau,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),  # a no-op unless fp16
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"))


@dataclass
class Tally:
    """One epoch's training counts: this process's, until `summed` over all of them at the epoch end."""
    seen: float = 0                # images trained on
    skipped: float = 0             # unreadable images left out of their batches
    loss_sum: float = 0.0          # summed, not averaged, so shares of any size add up
    t0: float = field(default_factory=time.perf_counter)

    def summed(self, device: torch.device) -> "Tally":
        seen, skipped, loss_sum = distributed.all_sum([self.seen, self.skipped, self.loss_sum], device)
        return Tally(seen, skipped, loss_sum, self.t0)


def train_epoch(t: Training, state: dict, epoch: int) -> Tally:
    """The epoch's batches from state["step"] on, counting state["step"]; leaves early, with last.pt saved, at
    --stop-after-steps, or raising Interrupted after Ctrl-C in any process."""
    t.net.train()
    tally = Tally()
    with tqdm(t.train_loader, desc=f"epoch {epoch + 1}/{t.cfg.epochs}", unit="batch", initial=state["step"],
              total=t.steps_per_epoch, leave=False, disable=None if t.world.main else True) as bar:
        for x, y, bad in bar:
            # the batch's readable images and the processes that were sent Ctrl-C, over all processes
            count, interrupts = distributed.all_sum([len(y), t.stop_requested.is_set()], t.device)
            if interrupts:
                save_training_state(t.cfg.output, t.resumable, state, t.world)
                raise Interrupted(f"interrupted: saved {t.cfg.output}/last.pt at epoch {epoch + 1}, step "
                                  f"{state['step']}; continue with --resume")
            state["step"] += 1
            tally.skipped += bad
            if count:
                step_loss = train_step(t, x, y, round(count))
                tally.seen += len(y)
                tally.loss_sum += step_loss
                bar.set_postfix(loss=f"{step_loss / max(1, len(y)):.3f}", lr=f"{t.scheduler.get_last_lr()[0]:.2g}",
                                img_s=f"{tally.seen / (time.perf_counter() - tally.t0):.0f}")
            done = epoch * t.steps_per_epoch + state["step"]
            if state["step"] < t.steps_per_epoch and save_due(t.cfg, done):  # an epoch's end saves anyway
                save_training_state(t.cfg.output, t.resumable, state, t.world)
                if done == t.cfg.stop_after_steps:
                    break
    return tally


def train_step(t: Training, x: torch.Tensor, y: torch.Tensor, count: int) -> float:
    """One optimizer step on this process's share (x, y) of a batch with `count` readable images over all
    processes; returns the share's summed loss."""
    if not len(y):  # this process's share was unreadable; it still joins DDP's gradient averaging
        x = torch.zeros(0, 3, t.pre.crop, t.pre.crop, dtype=torch.uint8)
    x = t.pre.normalize(x.to(t.device, non_blocking=True))
    if t.cfg.pca_lighting:  # on the normalized float batch, where it is exact (see pca_lighting)
        x = pca_lighting(x, t.pre.std, t.cfg.pca_lighting)
    x, y = x.contiguous(memory_format=t.memory_format), y.to(t.device, non_blocking=True)
    with torch.autocast(t.device.type, dtype=t.dtype or torch.float32, enabled=t.dtype is not None):
        batch_loss = t.criterion(t.net(x), y)
    # DDP averages the processes' gradients: scaled so, they are those of the mean over all `count`
    loss = batch_loss * t.world.size / count
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if t.cfg.clip_grad_norm:
        t.scaler.unscale_(t.optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.clip_grad_norm)
    scale = t.scaler.get_scale()
    t.scaler.step(t.optimizer)  # skipped when fp16 gradients overflowed; update() then lowers the scale
    t.scaler.update()
    if t.scaler.get_scale() >= scale:  # the schedule counts applied updates only
        t.scheduler.step()
    return batch_loss.item()  # one device sync per step


def save_due(cfg: TrainConfig, done: int) -> bool:
    """Whether last.pt is due after `done` batches, counted over all epochs: at --stop-after-steps, so the run
    can end there, and every --save-every-steps, so a crash loses at most that many."""
    return done == cfg.stop_after_steps or bool(cfg.save_every_steps and done % cfg.save_every_steps == 0)


def metrics_row(t: Training, epoch: int, tally: Tally, logits, labels, report: dict) -> dict:
    """The epoch's metrics.jsonl row, from the summed tally and the validation."""
    return {"epoch": epoch + 1, "loss": tally.loss_sum / tally.seen if tally.seen else math.nan,
            "val_loss": torch.nn.functional.cross_entropy(logits, labels).item(), "val_top1": report["top1"],
            "val_top5": report["top5"], "lr": t.scheduler.get_last_lr()[0],
            "images_per_second": tally.seen / (time.perf_counter() - tally.t0),
            "skipped_images": round(tally.skipped)}


def epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.3f}  val loss {row['val_loss']:.3f}  "
            f"top-1 {row['val_top1']:.3f}  top-5 {row['val_top5']:.3f}  lr {row['lr']:.2g}  "
            f"{row['images_per_second']:.0f} img/s"
            + (f"  ({row['skipped_images']} unreadable images skipped)" if row["skipped_images"] else ""))


def export_best(t: Training, state: dict, epoch: int, logits, labels,
                report: dict) -> tuple[Manifest | None, list, list[str]]:
    """model.pt if this epoch beat the best so far, best-epochNNN-*.pt if it ranks among the keep_best.

    Returns model.pt's new manifest (on rank 0, if it improved, else None), the kept [name, top1] pairs and
    the kept files that fell out, to remove once last.pt no longer names them.
    """
    improved = report["top1"] > state["best_top1"]
    name = f"best-epoch{epoch + 1:03d}-top1-{report['top1']:.3f}.pt"
    kept, dropped = rank_best(state["kept"], [name, report["top1"]], t.cfg.keep_best)
    targets = (["model.pt"] if improved else []) + ([name] if [name, report["top1"]] in kept else [])
    exported = None
    if targets and t.world.main:
        exported = export(t.cfg, t.model, t.classes, t.pre, logits, labels, report, state["run_id"], targets)
    return exported if improved else None, kept, dropped


def save_epoch_end(t: Training, state: dict, dropped: list[str]) -> None:
    """last.pt, then (rank 0) the dropped best-epoch files and metrics.jsonl, in the order a crash tolerates."""
    save_training_state(t.cfg.output, t.resumable, state, t.world)
    if t.world.main:
        remove(t.cfg.output, dropped)  # after last.pt stopped naming them
        metrics_lines = "".join(json.dumps(r) + "\n" for r in state["metrics"])
        atomic_write_bytes(f"{t.cfg.output}/metrics.jsonl", metrics_lines.encode())


def fit_for_labeling(t: Training, state: dict, best: Manifest) -> Manifest:
    """model.pt (best's) with the embedding projection and the int8 ranges fitted for its weights on the training
    set.

    Once, after the loop, for the model the run leaves: not at every epoch that improves. Rank 0 alone fits, after
    the last collective step, so the other processes are free to leave. model.pt's twin among the kept best-epoch
    files gets the same bytes, so the two keep one model version. What model.pt has already (a resumed run that
    did not improve on it) it keeps. What cannot be fitted (a diverged network) is a warning: the trained model is
    written all the same.
    """
    if (best.embedding or not t.cfg.embedding_dim) and best.int8:
        return best
    t0 = time.perf_counter()
    try:
        fitted = add_fitted(f"{t.cfg.output}/model.pt", uris(t.train_images), t.cfg.embedding_dim, "training set",
                            twins(t.cfg.output, state["kept"], best), device=t.device, amp_dtype=t.dtype,
                            batch_size=t.cfg.batch_size, workers=t.cfg.workers, seed=t.cfg.seed)
    except UserError as e:
        warn(f"model.pt has no embedding projection for `label --embeddings` nor int8 ranges for `label "
             f"--precision int8`: {e}")
        return best
    if (e := fitted.embedding) and not best.embedding:
        print(f"fitted the embedding projection on {e['fitted_on']} training images: {e['dim']} of {e['features']} "
              f"dimensions keep {e['explained_variance']:.1%} of the variance")
    if not best.int8:
        print(f"fitted the int8 ranges on {fitted.int8['fitted_on']} training images "
              f"({time.perf_counter() - t0:.1f} s in all)")
    return fitted


def uris(images: Images) -> list[str] | ShardSet:
    """What the projection is fitted on: folders' uris, or the shards themselves."""
    return images if isinstance(images, ShardSet) else [uri for uri, _ in images]


def validate(model, val_loader, pre, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the whole val set: this process's share, gathered from every process."""
    shares = distributed.all_gather(predict(model, val_loader, pre, device, dtype))
    return torch.cat([logits for logits, _ in shares]), torch.cat([labels for _, labels in shares])
