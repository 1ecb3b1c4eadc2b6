"""What a training run is asked to do: TrainConfig, the defaults each architecture trains well with, and the
checks that need no data, made before any work."""
from dataclasses import dataclass, field

import fsspec

from common.errors import UserError
from trainer.data import CROPS
from trainer.embedding import DIM

# What the options left unset (None) are, per architecture: the paper's SGD recipe for the ImageNet-sized
# networks; the demo's AdamW recipe for alexnet_small, on which SGD at lr 0.01 diverged to chance.
PAPER_RECIPE = dict(image_size=224, epochs=90, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=5e-4,
                    warmup_epochs=0.0, label_smoothing=0.0)
ARCH_DEFAULTS = {"alexnet": PAPER_RECIPE, "alexnet2012": PAPER_RECIPE,
                 "alexnet_small": dict(image_size=64, epochs=20, batch_size=32, optimizer="adamw", lr=1e-3,
                                       weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1)}
# The words each word-valued option takes: TrainConfig.validate checks them, the CLI lists them in --help.
CHOICES = {"arch": tuple(ARCH_DEFAULTS), "amp": ("auto", "bf16", "fp16", "off"), "optimizer": ("sgd", "adamw"),
           "schedule": ("cosine", "step", "plateau"), "plateau_metric": ("val_loss", "val_top1"), "crop": CROPS}


@dataclass
class TrainConfig:
    output: str                    # where last.pt, model.pt, best-*.pt and metrics.jsonl go
    data: str = ""                 # URL holding train/ and val/ (class folders or shards); with val_data, the
    val_data: str = ""             # training set itself (class folders, shard folder or pattern), and this val's; or:
    data_manifest: str = ""        # a CSV/Parquet table of (uri, label) training rows; classes = sorted labels
    val_manifest: str = ""         # the same for validation rows
    decision: str = ""             # keep only data_manifest rows with this decision (labels tables: accept)
    arch: str = "alexnet"          # also picks the defaults of the fields left None (ARCH_DEFAULTS)
    arch_kwargs: dict = field(default_factory=dict)
    image_size: int | None = None  # center crop at eval, random crop in training
    resize: int = 0                # shorter side at eval and for the paper crop; 0 means image_size * 256 / 224
    crop: str = "random-resized"   # training crop: random-resized, or paper (resize, then random image_size crop)
    pca_lighting: float = 0.0      # std of AlexNet's PCA colour noise (paper: 0.1); 0 is off
    epochs: int | None = None
    batch_size: int | None = None  # global: split across data-parallel processes
    optimizer: str | None = None   # sgd (paper: momentum 0.9, weight decay 5e-4) or adamw
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "cosine"       # cosine to 0, step (x lr_gamma every lr_step_epochs) or plateau (x lr_gamma)
    warmup_epochs: float | None = None  # linear warmup, before any schedule
    lr_step_epochs: float = 30.0
    lr_gamma: float = 0.1
    plateau_metric: str = "val_loss"  # val_loss or val_top1
    plateau_patience: int = 5      # epochs without improvement before plateau decays
    label_smoothing: float | None = None
    clip_grad_norm: float = 0.0    # max global gradient norm; 0 is off
    amp: str = "auto"              # auto (bf16 on CUDA, off on CPU), bf16, fp16 (with a gradient scaler), off
    channels_last: bool = True
    compile: bool = False          # torch.compile the model
    device: str = "auto"           # auto, cpu, cuda
    workers: int = 2
    seed: int = 0
    save_every_steps: int = 0      # also write last.pt every this many batches; 0: at epoch ends only
    keep_best: int = 0             # keep the best this many epochs as best-epochNNN-top1-X.XXX.pt
    stop_after_steps: int = 0      # end this run at this batch (counted over all epochs); --resume continues
    embedding_dim: int = DIM       # dimensions of the embedding projection fitted into model.pt; 0: none
    resume: bool = False
    overwrite: bool = False        # train anew into an output that holds a model.pt or last.pt

    def __post_init__(self):
        """Fields left None take the arch's defaults; validate() refuses an unknown arch."""
        for name, value in ARCH_DEFAULTS.get(self.arch, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self) -> None:
        """The checks that need no data, before any work: the word-valued options (the CLI takes them as plain
        strings), and an output that is a file, or holds a trained model that training would replace."""
        for name, words in CHOICES.items():
            if getattr(self, name) not in words:
                raise UserError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; "
                                f"use {', '.join(words[:-1])} or {words[-1]}")
        if self.embedding_dim < 0:
            raise UserError(f"--embedding-dim {self.embedding_dim} is negative; give the embedding's dimensions, "
                            "or 0 for no embedding projection")
        if self.resume and self.overwrite:
            raise UserError("--resume continues the run in --output and --overwrite starts anew over it; give one")
        fs, root = fsspec.core.url_to_fs(self.output)
        if fs.isfile(root):
            raise UserError(f"--output {self.output} is a file; give the folder to write model.pt, last.pt and "
                            "metrics.jsonl in")
        held = [name for name in ("model.pt", "last.pt") if fs.exists(f"{root}/{name}")]
        if held and not (self.resume or self.overwrite):
            raise UserError(f"--output {self.output} already holds {' and '.join(held)}; continue that run with "
                            "--resume, or train anew over it with --overwrite")
