"""The inference rewrites compute exactly what the network they replace computes."""
import copy

import pytest
import torch
from torch import nn

from beam_pipeline.lean_layers import SeparableMaxPool2d, lean_for_inference
from beam_pipeline.model_handler import load_classifier
from trainer.models import build_model


@pytest.mark.parametrize("arch, size, dtype", [("alexnet", 224, torch.bfloat16), ("alexnet2012", 227, torch.float32),
                                               ("alexnet_small", 64, torch.bfloat16)])
def test_the_lean_network_gives_bit_identical_outputs(arch, size, dtype):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval().to(dtype, memory_format=torch.channels_last)
    lean = lean_for_inference(copy.deepcopy(model))
    x = torch.randn(4, 3, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(lean(x), model(x))
    layers = [type(m).__name__ for m in lean.features]
    if arch == "alexnet":  # every pool became separable, each with its ReLU after it
        assert layers[:3] == ["Conv2d", "SeparableMaxPool2d", "ReLU"] and layers[-2:] == ["SeparableMaxPool2d", "ReLU"]
    if arch == "alexnet_small":  # its last pool rounds its size up: not rewritten
        assert layers[-2:] == ["MaxPool2d", "ReLU"]
    if arch == "alexnet2012":  # LRN sits between ReLU and pool: the order stays
        assert layers[1:4] == ["ReLU", "LocalResponseNorm", "SeparableMaxPool2d"]


@pytest.mark.parametrize("kernel, stride, size", [(3, 2, 55), (3, 2, 13), (2, 2, 8), (3, 1, 7), (3, 5, 10)])
def test_the_separable_pool_is_max_pool_with_nan_and_infinities(kernel, stride, size):
    x = torch.randn(2, 5, size, size + 3)
    x[0, 0, 1, 1], x[0, 1, 2, 2], x[1, 2, 0, 3] = float("nan"), float("-inf"), float("inf")
    expected = nn.functional.max_pool2d(x, kernel, stride)
    exactly = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(SeparableMaxPool2d(kernel, stride)(x), expected, **exactly)
    torch.testing.assert_close(SeparableMaxPool2d(kernel, stride)(x[0]), expected[0], **exactly)  # unbatched
    with pytest.raises(ValueError, match=f"max pool of {kernel} cannot slide over a side of {kernel - 1}"):
        SeparableMaxPool2d(kernel, stride)(x[..., :kernel - 1, :])


def test_only_exact_rewrites_are_made():
    net = nn.Sequential(nn.ReLU(), nn.MaxPool2d(3), nn.ReLU(inplace=True), nn.MaxPool2d(2, return_indices=True),
                        nn.MaxPool2d(1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1))
    lean = lean_for_inference(copy.deepcopy(net))
    assert [type(m).__name__ for m in lean] == ["SeparableMaxPool2d", "ReLU", "ReLU", "MaxPool2d", "MaxPool2d",
                                                "MaxPool2d", "ReLU"]
    assert lean[0].stride == 3  # nn.MaxPool2d's default stride: its kernel size
    x = torch.randn(1, 2, 13, 13)
    lean_tail, tail = lean[4:], net[4:]
    assert torch.equal(lean_tail(x.clone()), tail(x.clone()))


def test_the_labeling_model_on_a_cpu_is_the_lean_network(checkpoint):
    module = load_classifier(checkpoint, "cpu").module
    assert any(isinstance(m, SeparableMaxPool2d) for m in module.modules())
    assert not any(isinstance(m, nn.MaxPool2d) and not m.ceil_mode for m in module.modules())
