"""The AlexNet family: shapes, the paper's constants, torchvision compatibility."""
import pytest
import torch
import torchvision
from torch import nn

from schemas.checkpoint import CheckpointError
from trainer import models
from trainer.models import ARCHS, build_model


@pytest.mark.parametrize("arch, size, kwargs", [
    ("alexnet", 224, {}), ("alexnet2012", 224, {}),
    ("alexnet_small", 32, {"width": 8}), ("alexnet_small", 64, {"width": 8}), ("alexnet_small", 96, {"width": 8}),
])
def test_every_arch_maps_its_input_size_to_class_logits(arch, size, kwargs):
    model = build_model(arch, 7, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_torchvision_alexnet_state_dicts_load_as_is():
    reference = torchvision.models.alexnet(num_classes=1000)
    ours = build_model("alexnet", 1000, state_dict=reference.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), reference.eval()(x))


def test_alexnet_is_torchvisions_from_the_same_seed():
    torch.manual_seed(3)
    reference = torchvision.models.alexnet(num_classes=10).state_dict()
    torch.manual_seed(3)
    ours = build_model("alexnet", 10).state_dict()
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_alexnet2012_follows_the_paper():
    model = build_model("alexnet2012", 1000)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4)
    lrns = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    # Paper: k=2, n=5, alpha=1e-4, beta=0.75; torch divides alpha by n, so it stores 5e-4.
    assert len(lrns) == 2 and all((m.size, m.alpha / m.size, m.beta, m.k) == (5, 1e-4, 0.75, 2.0) for m in lrns)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)  # overlapping pooling
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]


def test_wrong_weights_and_unknown_arch_raise_one_clear_error():
    weights = build_model("alexnet_small", 10, width=8).state_dict()
    with pytest.raises(ValueError, match="do not fit alexnet_small with 5 classes"):
        build_model("alexnet_small", 5, state_dict=weights, width=8)
    with pytest.raises(ValueError, match=f"choose one of {', '.join(sorted(ARCHS))}"):
        build_model("vgg16", 10)


def test_load_model_takes_the_load_started_ahead_and_its_error(checkpoint, tmp_path, monkeypatch):
    loads = []
    real = models._load_model
    monkeypatch.setattr(models, "_load_model", lambda url: loads.append(url) or real(url))
    models.load_model_ahead(checkpoint)
    module, manifest, _, _ = models.load_model(checkpoint)
    assert loads == [checkpoint] and manifest.arch == "alexnet_small" and not module.training
    models.load_model(checkpoint)  # only the next load takes it
    assert loads == [checkpoint, checkpoint]
    missing = str(tmp_path / "gone.pt")
    models.load_model_ahead(missing)
    with pytest.raises(CheckpointError, match=f"checkpoint {missing} does not exist"):
        models.load_model(missing)
