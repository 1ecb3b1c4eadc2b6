"""Folding the normalization into the first convolution gives the normalized model's outputs."""
import copy

import pytest
import torch
from torch import nn

from beam_pipeline.raw_pixels import fold_normalization
from schemas.transform import Preprocess
from trainer.models import build_model

SMALL = Preprocess(72, 64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))


@pytest.mark.parametrize("arch, pre", [("alexnet", Preprocess(256, 224)), ("alexnet2012", Preprocess(256, 227)),
                                       ("alexnet_small", SMALL)])
def test_folded_model_on_raw_pixels_matches_the_model_on_normalized_pixels(arch, pre):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    for p in model.parameters():  # trained-like first layer: large weights and biases expose any shift error
        p.data.normal_(0, 0.05)
    folded = fold_normalization(copy.deepcopy(model), pre).eval()
    # A flat border makes the padded edge dominate: a wrong border correction cannot hide in the noise.
    x = torch.randint(0, 256, (3, 3, pre.crop, pre.crop), dtype=torch.uint8)
    x[:, :, :8], x[:, :, :, -8:] = 255, 0
    with torch.no_grad():
        expected, got = model(pre.normalize(x)), folded(x.float())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert not torch.allclose(model(x.float()), expected, atol=1e-2)  # the raw pixels alone are not enough


@pytest.mark.parametrize("crop, conv", [
    (4, dict(kernel_size=5, stride=2, padding=2)),                 # every output sees padding
    (23, dict(kernel_size=(3, 7), stride=(3, 2), padding=(1, 3))),  # uneven bands, different per axis
    (16, dict(kernel_size=3, padding=2, dilation=2, bias=False)),
])
def test_edge_bands_are_corrected_for_any_convolution_geometry(crop, conv):
    torch.manual_seed(1)
    pre = Preprocess(crop, crop)
    model = nn.Sequential(nn.Conv2d(3, 5, **conv))
    folded = fold_normalization(copy.deepcopy(model), pre)
    x = torch.randint(0, 256, (2, 3, crop, crop), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(folded(x.float()), model(pre.normalize(x)), atol=1e-4)


def test_an_image_of_another_size_is_refused_with_the_size_the_model_takes():
    folded = fold_normalization(nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2)), Preprocess(64, 64))
    with pytest.raises(ValueError, match="takes 64 x 64 images .* got 56 x 64"):
        folded(torch.zeros(1, 3, 56, 64))


def test_a_network_that_does_not_start_with_an_rgb_convolution_is_refused():
    with pytest.raises(ValueError, match="does not start with a convolution over the RGB image"):
        fold_normalization(nn.Sequential(nn.Conv2d(1, 4, 3)), Preprocess(32, 32))
