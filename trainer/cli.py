"""`alexlabel train`, `alexlabel import-weights`, `alexlabel refit`, `alexlabel evaluate` and `alexlabel shards`."""
import json
from dataclasses import replace

import click
import fsspec
import torch

from common.devices import DEVICE_HELP, DEVICE_WORDS, pick_device
from common.errors import UserError
from common.interrupt import exits_130
from common.storage import atomic_write_bytes, canonical_uri, check_output_file
from schemas.checkpoint import announced_checkpoint_file
from schemas.shards import SHARD_BYTES, ShardSet, check_destination, summary, write_shards
from schemas.transform import TenCrop
from trainer import distributed
from trainer.config import ARCH_DEFAULTS, CHOICES, TrainConfig
from trainer.data import class_differences, class_folders, list_image_folder, manifest_samples
from trainer.distributed import World
from trainer.embedding import DIM, MAX_IMAGES
from trainer.evaluate import accuracy_line, accuracy_report, format_confusion, predict, predict_ten_crop
from trainer.models import ARCHS, load_model
from trainer.shards import eval_batches, image_set
from trainer.train import train
from trainer.weights import IMAGENET_EVAL, import_weights, refit


def words(option: str) -> str:
    """--help's a|b|c for an option TrainConfig.validate checks, so the CLI does not check it a second time."""
    return "|".join(CHOICES[option])


def arch_default(option: str) -> str:
    """--help's default of an option that depends on --arch, read from ARCH_DEFAULTS, e.g.
    `[default: sgd for alexnet, alexnet2012; adamw for alexnet_small]`."""
    archs_by_value = {}
    for arch, defaults in ARCH_DEFAULTS.items():
        archs_by_value.setdefault(defaults[option], []).append(arch)
    listed = "; ".join(f"{value} for {', '.join(archs)}" for value, archs in archs_by_value.items())
    return f"[default: {listed}]"


@click.command("train")
@click.option("--data", default="", help="Folder or bucket URL with train/ and val/, each <class>/ image folders or "
              "WebDataset shards (`alexlabel shards`); with --val-data, the training set itself: class folders, a "
              "shard folder or a shard pattern (e.g. 'gs://b/train/shard-{000000..000099}.tar').")
@click.option("--val-data", default="", help="With --data TRAIN: the validation set, in any form --data takes.")
@click.option("--data-manifest", default="", help="Instead of --data: CSV or Parquet file (or folder, e.g. a "
              "labels table) of uri,label training rows, or a labeling output folder (people's labels win over the "
              "model's, unusable rows left out); classes are the sorted unique labels.")
@click.option("--val-manifest", default="", help="With --data-manifest: the same for validation rows.")
@click.option("--decision", default="", help="Keep only --data-manifest rows with this decision, e.g. accept.")
@click.option("--output", required=True, help="Where last.pt, model.pt and metrics.jsonl are written.")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), default="alexnet", show_default=True)
@click.option("--width", type=int, help="Channel width of alexnet_small (default 64).")
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--image-size", type=int, help=f"Crop size fed to the network {arch_default('image_size')}.")
@click.option("--resize", type=int, default=0, help="Shorter side before the eval center crop and the paper crop "
              "[default: image size * 256 / 224].")
@click.option("--crop", metavar=words("crop"), default="random-resized", show_default=True,
              help="Training crop: random area/aspect, or the paper's random image-size crop after --resize.")
@click.option("--pca-lighting", type=float, default=0.0, show_default=True,
              help="Std of AlexNet's PCA colour noise on training images (paper: 0.1); 0 is off.")
@click.option("--epochs", type=int, help=arch_default("epochs"))
@click.option("--batch-size", type=int, help="Global batch: data-parallel processes each take an equal share of it "
              f"{arch_default('batch_size')}.")
@click.option("--optimizer", metavar=words("optimizer"), help=arch_default("optimizer"))
@click.option("--lr", type=float, help=arch_default("lr"))
@click.option("--weight-decay", type=float, help=arch_default("weight_decay"))
@click.option("--schedule", metavar=words("schedule"), default="cosine", show_default=True,
              help="cosine to 0; step: x --lr-gamma every --lr-step-epochs; plateau: x --lr-gamma when "
              "--plateau-metric stalls for --plateau-patience epochs.")
@click.option("--warmup-epochs", type=float, help=f"Linear warmup before the schedule {arch_default('warmup_epochs')}.")
@click.option("--lr-step-epochs", type=float, default=30.0, show_default=True)
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option("--plateau-metric", metavar=words("plateau_metric"), default="val_loss", show_default=True)
@click.option("--plateau-patience", type=int, default=5, show_default=True)
@click.option("--label-smoothing", type=float, help=arch_default("label_smoothing"))
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
@click.option("--embedding-dim", type=int, default=DIM, show_default=True,
              help="Dimensions of the embedding projection (a PCA of the penultimate activations, on the training "
              "set) that model.pt carries for `label --embeddings`; 0: none.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUTPUT/last.pt.")
@click.option("--overwrite", is_flag=True, help="Train anew into an --output that holds a model.pt or last.pt, "
              "replacing them.")
def train_command(width, dropout, nproc, **kw):
    """Train an AlexNet classifier and export an inference checkpoint (OUTPUT/model.pt).

    Options marked "for <arch>" default to that arch's recipe: the paper's SGD for alexnet and alexnet2012, the
    demo's AdamW for alexnet_small. Ctrl-C stops at the next step with OUTPUT/last.pt saved, for --resume.

    Under torchrun, every process runs this command: `torchrun --nproc-per-node 8 $(which alexlabel) train ...`.
    """
    cfg = TrainConfig(arch_kwargs={"dropout": dropout, **({"width": width} if width else {})}, **kw)
    with exits_130(say=World.from_env().main):
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
@click.option("--fit-on", "--fit-pca", "fit_on", metavar="FOLDER", default="", help="Fit the embedding projection "
              "(for `label --embeddings`) and the int8 ranges (for `label --precision int8`) on the images anywhere "
              "under this folder or bucket URL, e.g. a sample of those you will label; at most "
              f"{MAX_IMAGES} of them are used. --fit-pca is its older name.")
@click.option("--embedding-dim", type=click.IntRange(min=1), help=f"With --fit-on: the embedding's dimensions "
              f"[default: {DIM}].")
def import_weights_command(state_dict, arch, classes_file, output, resize, crop, fit_on, embedding_dim):
    """Wrap a state dict file (e.g. torchvision's ImageNet AlexNet weights) into a checkpoint to label with."""
    check_output_file(output, "--output")
    if embedding_dim and not fit_on:
        raise UserError("--embedding-dim sizes the projection that --fit-on fits; give --fit-on FOLDER too")
    try:
        preprocess = replace(IMAGENET_EVAL, resize=resize, crop=crop)
    except ValueError as e:
        raise UserError(str(e)) from None
    manifest = import_weights(state_dict, arch, classes_file, output, preprocess, fit_on, embedding_dim or DIM)
    fitted = f"{fitted_line(manifest)}, " if manifest.embedding else ""
    click.echo(f"wrote {output}: {arch}, {len(manifest.class_names)} classes, temperature 1.0 (uncalibrated), "
               f"{fitted}model_version {manifest.model_version}")


@click.command("refit")
@click.argument("checkpoint")
@click.option("--fit-on", "fit_on", metavar="FOLDER", required=True, help="The images to fit on, anywhere under this "
              f"folder or bucket URL, e.g. a sample of those you will label; at most {MAX_IMAGES} of them are used.")
@click.option("--output", required=True, help="The checkpoint to write (usually a new model version); CHECKPOINT stays "
              "as it is.")
@click.option("--embedding-dim", type=click.IntRange(min=1), help="The embedding's dimensions [default: CHECKPOINT's "
              f"own, else {DIM}].")
def refit_command(checkpoint, fit_on, output, embedding_dim):
    """Fit a checkpoint's embedding projection and int8 ranges anew, on a folder of images, into a new checkpoint."""
    check_output_file(output, "--output")
    checkpoint = announced_checkpoint_file(checkpoint)
    if canonical_uri(output) == canonical_uri(checkpoint):
        raise UserError(f"--output {output} is the checkpoint itself; write the refitted one to a new file (its model "
                        f"version usually changes, and the rows labeled with {checkpoint} name the old one)")
    manifest = refit(checkpoint, output, fit_on, embedding_dim)
    was = manifest.provenance["refits"][-1]["model_version"]
    click.echo(f"wrote {output}: {fitted_line(manifest)}, model_version {manifest.model_version} "
               + (f"(was {was})" if was != manifest.model_version else "(unchanged: the same fit as before)"))


def fitted_line(manifest) -> str:
    """What import-weights and refit say of the projection and ranges they fitted."""
    e = manifest.embedding
    return (f"embedding projection of {e['dim']} dimensions fitted on {e['fitted_on']} images "
            f"({e['explained_variance']:.1%} of the variance), int8 ranges on {manifest.int8['fitted_on']}")


@click.command("evaluate")
@click.option("--checkpoint", required=True, help="An inference checkpoint (model.pt).")
@click.option("--data", required=True, help="Folder or bucket URL of <class>/<images>, e.g. DATA/val, or shards "
              "(a folder with index.json, or a pattern).")
@click.option("--json", "json_out", help="Also write the full report (per-class, confusion) as JSON here.")
@click.option("--device", default="auto", show_default=True, metavar=DEVICE_WORDS, help=DEVICE_HELP)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--ten-crop", is_flag=True, help="Score as the 2012 paper did: the softmax averaged over the center "
              "and four corner crops and their mirror images; the center crop's figures are printed beside.")
def evaluate_command(checkpoint, data, json_out, device, batch_size, workers, ten_crop):
    """Top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on labelled images or shards."""
    if json_out:
        check_output_file(json_out, "--json")
    torch_device = pick_device(device)
    module, manifest, *_ = load_model(announced_checkpoint_file(checkpoint))
    module = module.to(torch_device, memory_format=torch.channels_last)
    _, images = image_set(data, manifest.class_names, "the model")
    if not isinstance(images, ShardSet) and (differences := class_differences(class_folders(data),
                                                                              manifest.class_names)):
        click.echo(f"note: the classes of {data} differ from the model's ({differences}); evaluating those in both",
                   err=True)
    pre = manifest.preprocess
    amp_dtype = torch.bfloat16 if torch_device.type == "cuda" else None
    if ten_crop:  # the paper's prediction is the report; the center crop's accuracy, from the same forward, beside it
        center, logits, labels = predict_ten_crop(module, eval_batches(images, TenCrop.of(pre), batch_size, workers),
                                                  pre, torch_device, amp_dtype)
        report = accuracy_report(logits, labels, manifest.class_names)
        single = accuracy_report(center, labels, manifest.class_names)
        report["center_crop"] = {"top1": single["top1"], "top5": single["top5"]}
    else:
        logits, labels = predict(module, eval_batches(images, pre, batch_size, workers), pre, torch_device, amp_dtype)
        report = accuracy_report(logits, labels, manifest.class_names)
    click.echo(f"{report['images']} images: {accuracy_line(report)}")
    for name, acc in report["per_class"].items():
        click.echo(f"  {name:<24} {acc:.4f}")
    click.echo(format_confusion(report["confusion"], manifest.class_names))
    if json_out:
        atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())


def source_kind(source: str) -> str:
    """What `alexlabel shards` was given, from one listing: "imagefolder" (train/ and val/ of class folders, as
    `train --data` takes), "classes" (one tree of class folders) or "manifest" (a CSV or Parquet file, a Parquet
    table folder, or a labeling output)."""
    fs, path = fsspec.core.url_to_fs(source)
    if fs.isfile(path):
        return "manifest"
    if not fs.isdir(path):
        raise UserError(f"shard source {source} does not exist; give an image folder (train/<class>/ and "
                        "val/<class>/, or <class>/) or a uri,label manifest (CSV, Parquet or a labeling output)")
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    if "runs" in names or any(n.endswith(".parquet") or "=" in n for n in names):  # key=value/: hive partitions
        return "manifest"
    return "imagefolder" if "train" in names else "classes"


def source_sets(source: str, kind: str, decision: str) -> list[tuple[list[str], list[tuple[str, int]]]]:
    """(classes, samples) of each set to write: train's then val's, val with train's classes (as `alexlabel train`
    reads them, so label indices agree), or the one set of a class tree or manifest."""
    if kind == "manifest":
        return [manifest_samples(source, decision=decision or None)]
    if kind == "classes":
        return [list_image_folder(source)]
    classes, train = list_image_folder(f"{source}/train")
    _, val = list_image_folder(f"{source}/val", classes, f"{source}/train")
    if differences := class_differences(class_folders(f"{source}/val"), classes):
        click.echo(f"note: the classes of {source}/val differ from train's ({differences}); writing val with "
                   "train's classes", err=True)
    return [(classes, train), (classes, val)]


def under(root: str, split: str) -> str:
    """ROOT/train for a split; ROOT itself for the one set of a class tree or manifest."""
    return f"{root}/{split}" if split else root


@click.command("shards")
@click.argument("source")
@click.argument("dest")
@click.option("--shard-size", type=click.FloatRange(min=0, min_open=True), default=SHARD_BYTES / 2**20,
              show_default=True, metavar="MB",
              help="Each shard's target size in MB.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle before the split into "
              "shards.")
@click.option("--overwrite", is_flag=True, help="Replace the shards DEST holds (their index goes first).")
@click.option("--decision", default="", help="Keep only the manifest rows with this decision, e.g. accept.")
def shards_command(source, dest, shard_size, seed, overwrite, decision):
    """Pack an image folder or manifest into shuffled WebDataset tar shards that `alexlabel train --data` reads.

    SOURCE is an ImageFolder root (train/<class>/ and val/<class>/, written to DEST/train and DEST/val), one tree
    of <class>/ folders, or a uri,label manifest (CSV, Parquet, or a labeling output, where people's labels win),
    written to DEST. Either may be local or gs://. Images that cannot be read are left out and listed.
    """
    source, dest = source.rstrip("/"), dest.rstrip("/")
    kind = source_kind(source)
    if decision and kind != "manifest":
        raise UserError("--decision filters manifest rows; drop it for an image folder")
    splits = ("train", "val") if kind == "imagefolder" else ("",)
    for out in dict.fromkeys([dest, *(under(dest, split) for split in splits)]):  # DEST itself: a file there
        check_destination(out, overwrite)
    errors = []
    for split, (classes, samples) in zip(splits, source_sets(source, kind, decision), strict=True):
        out = under(dest, split)
        line, left_out, error = summary(*write_shards(samples, classes, out, round(shard_size * 2**20), seed,
                                                      under(source, split)), out)
        click.echo(line)
        if left_out:
            click.echo(left_out, err=True)
        errors += [error] if error else []
    if errors:  # after every split is written: what could be packed is
        raise UserError("; ".join(errors))
