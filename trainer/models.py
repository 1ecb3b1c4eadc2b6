"""The AlexNet family, built by name. A leaf module: torch only.

- `alexnet`: torchvision's layout, so torchvision state dicts (e.g. its ImageNet weights) load as is. Written out
  here, not imported: importing torchvision.models imports torch._dynamo, a large part of labeling's start-up.
- `alexnet2012`: the 2012 paper's network: 96-256-384-384-256 convolutions, local response
  normalization (k=2, n=5, alpha=1e-4, beta=0.75), overlapping 3x3/2 max pooling, dropout 0.5.
- `alexnet_small`: the same shape for 32-96 px inputs (stride-2 5x5 stem), with a width knob.

`load_model` builds the one a checkpoint names, for evaluation and labeling alike, and `features_and_logits`
gives the penultimate activations that embeddings are projected from. The labeling pipeline takes this module
and nothing else from the trainer.
"""
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import nn

from common.errors import first_line
from schemas.checkpoint import CheckpointError, Manifest, Projection, load_checkpoint, split_state


def _lrn() -> nn.LocalResponseNorm:
    # The paper divides alpha by nothing; torch divides it by `size`, so scale it back up.
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


class _Net(nn.Module):
    """What every ARCHS network is: features, then avgpool, then classifier (features_and_logits relies on it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(_Net):
    """torchvision's AlexNet, module for module: the same state dict keys, and the same weights from the same seed."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(256 * 6 * 6, 4096, num_classes, dropout)


class AlexNet2012(_Net):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(256 * 6 * 6, 4096, num_classes, dropout)


class AlexNetSmall(_Net):
    def __init__(self, num_classes: int = 10, width: int = 64, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4 = width, 3 * width, 6 * width, 4 * width
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = _classifier(c4 * 2 * 2, 16 * width, num_classes, dropout)
        # He init: trains from scratch in a few epochs, where torch's default stalls. Not on the meta device, where
        # build_model waits for a state dict: there it initializes nothing, and imports torch._dynamo.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)


def _classifier(features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(features, hidden), nn.ReLU(inplace=True),
        nn.Dropout(p=dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


ARCHS = {"alexnet": AlexNet, "alexnet2012": AlexNet2012, "alexnet_small": AlexNetSmall}


def build_model(arch: str, num_classes: int, state_dict: dict | None = None, **kwargs) -> nn.Module:
    """The named architecture, optionally with weights; ValueError says why weights or options don't fit."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}")
    try:
        if state_dict is None:
            return ARCHS[arch](num_classes=num_classes, **kwargs)
        with torch.device("meta"):  # skip random init of ~60M weights that the state dict replaces anyway
            model = ARCHS[arch](num_classes=num_classes, **kwargs)
        model.load_state_dict(state_dict, assign=True)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"weights or options do not fit {arch} with {num_classes} classes ({first_line(e)})"
                         ) from None
    return model


_ahead: dict[str, Future] = {}


def load_model_ahead(checkpoint: str) -> None:
    """Start loading `checkpoint` in a thread, for the next load_model of it to take. Reading, hashing and copying
    the weights mostly leave the GIL free, so the load goes on beside the work that holds it, such as imports."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="load-model-ahead")
    _ahead[checkpoint] = pool.submit(_load_model, checkpoint)
    pool.shutdown(wait=False)


class LoadedModel(NamedTuple):
    module: nn.Module  # in eval mode, on the CPU
    manifest: Manifest
    projection: Projection | None  # the embedding projection; None: the checkpoint has none
    int8: torch.Tensor | None  # the int8 activation ranges (schemas.checkpoint.INT8_KEY); None: none


def load_model(checkpoint: str) -> LoadedModel:
    """The network a checkpoint holds, with what was fitted for it; CheckpointError says why not. Waits for a load
    load_model_ahead started, if one did."""
    future = _ahead.pop(checkpoint, None)
    return future.result() if future else _load_model(checkpoint)


def _load_model(checkpoint: str) -> LoadedModel:
    state_dict, manifest = load_checkpoint(checkpoint)
    try:
        weights, projection, int8 = split_state(state_dict)
        module = build_model(manifest.arch, len(manifest.class_names), weights, **manifest.arch_kwargs)
        if projection is not None and projection.mean.shape[0] != module.classifier[-1].in_features:
            raise ValueError(f"its embedding projection reads {projection.mean.shape[0]} activations, the network "
                             f"has {module.classifier[-1].in_features}")
        if int8 is not None and len(int8) != len(quantization_units(module)):
            raise ValueError(f"its int8 ranges are for {len(int8)} layers, the network has "
                             f"{len(quantization_units(module))}")
    except ValueError as e:
        raise CheckpointError(f"checkpoint {checkpoint}: {e}; re-export it") from None
    return LoadedModel(module.eval(), manifest, projection, int8)


def features_and_logits(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass, as every ARCHS network's forward runs it, giving the penultimate activations (what the
    last Linear layer reads) and the logits. Spelled out rather than hooked: a hook on a model that several
    labeling threads share would hand one thread's activations to another."""
    penultimate = module.classifier[:-1](torch.flatten(module.avgpool(module.features(x)), 1))
    return penultimate, module.classifier[-1](penultimate)


def quantization_units(module: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The network's layers in forward order as (part, layers) units, part one of features, avgpool, classifier:
    each layer with weights together with the ReLU after it, every other layer alone, dropout left out. An int8
    network quantizes after each unit (beam_pipeline/int8.py), where its calibration observes (trainer/int8_ranges.py);
    both walk the network by this one list, so their units match."""
    units: list[tuple[str, list[nn.Module]]] = []
    for part in ("features", "avgpool", "classifier"):
        layers = getattr(module, part)
        for layer in layers if isinstance(layers, nn.Sequential) else [layers]:
            if isinstance(layer, nn.Dropout):
                continue
            if isinstance(layer, nn.ReLU) and units and units[-1][0] == part and _has_weights(units[-1][1][-1]):
                units[-1][1].append(layer)
            else:
                units.append((part, [layer]))
    return units


def _has_weights(layer: nn.Module) -> bool:
    return next(layer.parameters(), None) is not None
