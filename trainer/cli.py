"""`alexlabel train` and `alexlabel evaluate`."""
import json

import click
import torch

from schemas.storage import atomic_write_bytes
from trainer.data import list_image_folder, loader
from trainer.evaluate import accuracy_report, load_model, predict
from trainer.models import ARCHS
from trainer.train import TrainConfig, pick_device, train


@click.command("train")
@click.option("--data", required=True, help="Folder or bucket URL with train/<class>/ and val/<class>/ images.")
@click.option("--output", required=True, help="Where last.pt, model.pt and metrics.jsonl are written.")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), default="alexnet", show_default=True)
@click.option("--width", type=int, help="Channel width of alexnet_small (default 64).")
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--image-size", type=int, default=224, show_default=True, help="Crop size fed to the network.")
@click.option("--epochs", type=int, default=90, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader decode processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/last.pt.")
def train_command(width, dropout, **kw):
    """Train an AlexNet classifier and export an inference checkpoint (OUTPUT/model.pt)."""
    arch_kwargs = {"dropout": dropout, **({"width": width} if width else {})}
    manifest = train(TrainConfig(arch_kwargs=arch_kwargs, **kw))
    click.echo(f"wrote {kw['output']}/model.pt: val top-1 {manifest.metrics['val_top1']:.3f}, "
               f"temperature {manifest.temperature:.2f}, model_version {manifest.model_version}")


@click.command("evaluate")
@click.option("--checkpoint", required=True, help="An inference checkpoint (model.pt).")
@click.option("--data", required=True, help="Folder or bucket URL of <class>/<images>, e.g. DATA/val.")
@click.option("--json", "json_out", help="Also write the full report (per-class, confusion) as JSON here.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def evaluate_command(checkpoint, data, json_out, device, batch_size, workers):
    """Top-1, top-5 and per-class accuracy of a checkpoint on a labelled image folder."""
    torch_device = pick_device(device)
    module, manifest = load_model(checkpoint, torch_device)
    _, samples = list_image_folder(data, manifest.class_names)
    pre = manifest.preprocess
    logits, labels = predict(module, loader(samples, pre.eval_tensor, pre.resize, batch_size, False, workers, 0),
                             pre, torch_device, torch.bfloat16 if torch_device.type == "cuda" else None)
    report = accuracy_report(logits, labels, manifest.class_names)
    click.echo(f"{report['images']} images: top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}")
    for name, acc in report["per_class"].items():
        click.echo(f"  {name:<24} {acc:.4f}")
    if json_out:
        atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())
