"""`alexlabel train`, `alexlabel import-weights` and `alexlabel evaluate`."""
import json
from dataclasses import replace

import click
import torch

from common.devices import DEVICE_HELP, DEVICE_WORDS, pick_device
from common.errors import UserError
from common.storage import atomic_write_bytes
from trainer import distributed
from trainer.data import eval_loader, list_image_folder
from trainer.distributed import World
from trainer.evaluate import accuracy_report, format_confusion, predict
from trainer.models import ARCHS, load_model
from trainer.train import CHOICES, TrainConfig, train
from trainer.weights import IMAGENET_EVAL, import_weights


def words(option: str) -> str:
    """--help's a|b|c for an option TrainConfig.validate checks, so the CLI does not check it a second time."""
    return "|".join(CHOICES[option])


@click.command("train")
@click.option("--data", default="", help="Folder or bucket URL with train/<class>/ and val/<class>/ images.")
@click.option("--data-manifest", default="", help="Instead of --data: CSV or Parquet file (or folder, e.g. a "
              "labels table) of uri,label training rows; classes are the sorted unique labels.")
@click.option("--val-manifest", default="", help="With --data-manifest: the same for validation rows.")
@click.option("--decision", default="", help="Keep only --data-manifest rows with this decision, e.g. accept.")
@click.option("--output", required=True, help="Where last.pt, model.pt and metrics.jsonl are written.")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), default="alexnet", show_default=True)
@click.option("--width", type=int, help="Channel width of alexnet_small (default 64).")
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--image-size", type=int, default=224, show_default=True, help="Crop size fed to the network.")
@click.option("--resize", type=int, default=0, help="Shorter side before the eval center crop and the paper crop "
              "[default: image size * 256 / 224].")
@click.option("--crop", metavar=words("crop"), default="random-resized", show_default=True,
              help="Training crop: random area/aspect, or the paper's random image-size crop after --resize.")
@click.option("--pca-lighting", type=float, default=0.0, show_default=True,
              help="Std of AlexNet's PCA colour noise on training images (paper: 0.1); 0 is off.")
@click.option("--epochs", type=int, default=90, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="Global batch: data-parallel processes each take an equal share of it.")
@click.option("--optimizer", metavar=words("optimizer"), default="sgd", show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--schedule", metavar=words("schedule"), default="cosine", show_default=True,
              help="cosine to 0; step: x --lr-gamma every --lr-step-epochs; plateau: x --lr-gamma when "
              "--plateau-metric stalls for --plateau-patience epochs.")
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True, help="Linear warmup before the schedule.")
@click.option("--lr-step-epochs", type=float, default=30.0, show_default=True)
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option("--plateau-metric", metavar=words("plateau_metric"), default="val_loss", show_default=True)
@click.option("--plateau-patience", type=int, default=5, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--clip-grad-norm", type=float, default=0.0, show_default=True,
              help="Clip the global gradient norm to this; 0 is off.")
@click.option("--amp", metavar=words("amp"), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU; fp16 adds a gradient scaler.")
@click.option("--compile", is_flag=True, help="torch.compile the model (slow start, faster steps on GPUs).")
@click.option("--device", default="auto", show_default=True, metavar=DEVICE_WORDS, help=DEVICE_HELP)
@click.option("--workers", type=int, default=2, show_default=True,
              help="DataLoader decode processes, per training process.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel training processes on this machine: one per GPU (nccl), or on a CPU processes "
              "sharing the cores (gloo). For several machines, launch with torchrun instead.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every-steps", type=int, default=0, show_default=True,
              help="Also write last.pt every N batches (0: at epoch ends only).")
@click.option("--keep-best", type=int, default=0, show_default=True,
              help="Keep the K best epochs by val top-1 as best-epochNNN-top1-X.XXX.pt beside model.pt.")
@click.option("--stop-after-steps", type=int, default=0, show_default=True,
              help="End this run at batch N, counted over all epochs, with last.pt saved; --resume continues.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUTPUT/last.pt.")
def train_command(width, dropout, nproc, **kw):
    """Train an AlexNet classifier and export an inference checkpoint (OUTPUT/model.pt).

    Under torchrun, every process runs this command: `torchrun --nproc-per-node 8 $(which alexlabel) train ...`.
    """
    cfg = TrainConfig(arch_kwargs={"dropout": dropout, **({"width": width} if width else {})}, **kw)
    manifest = distributed.spawn(train, cfg, nproc) if nproc > 1 else train(cfg)
    if not World.from_env().main:
        return
    if manifest is None:
        click.echo(f"stopped before the first epoch ended; continue with --resume --output {kw['output']}")
        return
    m = manifest.metrics
    click.echo(f"wrote {kw['output']}/model.pt: val top-1 {m['val_top1']:.3f}, temperature {manifest.temperature:.2f} "
               f"(expected calibration error {m['ece_before']:.3f} -> {m['ece_after']:.3f}), "
               f"model_version {manifest.model_version}")


@click.command("import-weights")
@click.argument("state_dict")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), default="alexnet", show_default=True,
              help="The architecture whose layout the weights have (alexnet: torchvision's).")
@click.option("--classes", "classes_file", required=True, help="Text file: one class name per line, in logit order.")
@click.option("--output", required=True, help="Checkpoint to write, e.g. MODEL_DIR/model.pt.")
@click.option("--resize", type=int, default=IMAGENET_EVAL.resize, show_default=True, help="Eval resize of the "
              "shorter side.")
@click.option("--crop", type=int, default=IMAGENET_EVAL.crop, show_default=True, help="Eval center crop.")
def import_weights_command(state_dict, arch, classes_file, output, resize, crop):
    """Wrap a state dict file (e.g. torchvision's ImageNet AlexNet weights) into a checkpoint to label with."""
    try:
        preprocess = replace(IMAGENET_EVAL, resize=resize, crop=crop)
    except ValueError as e:
        raise UserError(str(e)) from None
    manifest = import_weights(state_dict, arch, classes_file, output, preprocess)
    click.echo(f"wrote {output}: {arch}, {len(manifest.class_names)} classes, temperature 1.0 (uncalibrated), "
               f"model_version {manifest.model_version}")


@click.command("evaluate")
@click.option("--checkpoint", required=True, help="An inference checkpoint (model.pt).")
@click.option("--data", required=True, help="Folder or bucket URL of <class>/<images>, e.g. DATA/val.")
@click.option("--json", "json_out", help="Also write the full report (per-class, confusion) as JSON here.")
@click.option("--device", default="auto", show_default=True, metavar=DEVICE_WORDS, help=DEVICE_HELP)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def evaluate_command(checkpoint, data, json_out, device, batch_size, workers):
    """Top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on a labelled image folder."""
    torch_device = pick_device(device)
    module, manifest = load_model(checkpoint)
    module = module.to(torch_device, memory_format=torch.channels_last)
    _, samples = list_image_folder(data, manifest.class_names)
    pre = manifest.preprocess
    logits, labels = predict(module, eval_loader(samples, pre, batch_size, workers),
                             pre, torch_device, torch.bfloat16 if torch_device.type == "cuda" else None)
    report = accuracy_report(logits, labels, manifest.class_names)
    click.echo(f"{report['images']} images: top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}")
    for name, acc in report["per_class"].items():
        click.echo(f"  {name:<24} {acc:.4f}")
    click.echo(format_confusion(report["confusion"], manifest.class_names))
    if json_out:
        atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())
