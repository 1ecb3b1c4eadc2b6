"""`alexlabel evaluate --ten-crop`: the 2012 paper's ten test-time views, and the gain over the center crop."""
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from commands import invoke
from PIL import Image

from schemas.transform import Preprocess, TenCrop, eval_tensor_from_bytes, to_uint8_tensor
from trainer.evaluate import predict, predict_ten_crop


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def gradient(w: int, h: int) -> Image.Image:
    """Red is the column, green the row: every pixel says where it is."""
    x, y = np.meshgrid(np.arange(w) * 6, np.arange(h) * 7)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # torch's kernel after libjpeg-turbo; PIL's
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(97, 61), (50, 131), (64, 64)])
def test_view_0_is_exactly_the_eval_tensor(fmt, interpolation, size):
    pre = Preprocess(resize=48, crop=40, interpolation=interpolation)
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)), fmt)
    views = eval_tensor_from_bytes(data, TenCrop.of(pre))[0]
    assert views.shape == (10, 3, 40, 40) and views.dtype == torch.uint8
    assert torch.equal(views[0], eval_tensor_from_bytes(data, pre)[0])


@pytest.mark.parametrize("path", ["PIL", "tensor"])
def test_views_are_the_center_the_four_corners_then_their_mirror_images(path):
    """The image is already resize on its shorter side, so each view is a slice of it, pixel for pixel."""
    img, pre = gradient(40, 32), TenCrop.of(Preprocess(resize=32, crop=24))
    views = pre.eval_tensor(img) if path == "PIL" else pre.eval_tensor_chw(to_uint8_tensor(img))
    full = to_uint8_tensor(img)
    five = [full[:, y:y + 24, x:x + 24] for x, y in ((8, 4), (0, 0), (16, 0), (0, 8), (16, 8))]
    for i, view in enumerate(five):
        assert torch.equal(views[i], view) and torch.equal(views[5 + i], view.flip(-1)), i


def test_ten_crop_is_the_mean_softmax_of_the_views_and_the_center_crop_is_view_0():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    pre = Preprocess(resize=4, crop=4)
    views, labels = torch.randint(0, 256, (3, 10, 3, 4, 4), dtype=torch.uint8), torch.tensor([0, 1, 2])
    center, ten_crop, got = predict_ten_crop(model, [(views, labels, 0)], pre, torch.device("cpu"), None)
    with torch.no_grad():
        logits = model(pre.normalize(views.flatten(0, 1))).view(3, 10, 5)
    assert torch.equal(got, labels)
    assert torch.allclose(center, predict(model, [(views[:, 0], labels, 0)], pre, torch.device("cpu"), None)[0])
    assert torch.allclose(ten_crop.exp(), logits.softmax(-1).mean(1))


def test_evaluate_ten_crop_prints_both_figures_and_the_gain(checkpoint, sample_dir, tmp_path):
    val = os.path.join(sample_dir, "val")
    result = invoke("evaluate", "--checkpoint", checkpoint, "--data", val, "--json", tmp_path / "ten.json",
                    "--workers", 0, "--ten-crop")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ten.json").read_text())
    first = result.output.splitlines()[0]
    assert first == "16 images: ten-crop " + "  ".join(
        f"{name} {report[k]:.4f} (center crop {report['center_crop'][k]:.4f}, "
        f"{report[k] - report['center_crop'][k]:+.4f})" for name, k in (("top-1", "top1"), ("top-5", "top5")))
    assert report["images"] == 16 and sum(map(sum, report["confusion"])) == 16
    single = invoke("evaluate", "--checkpoint", checkpoint, "--data", val, "--workers", 0)
    assert re.match(rf"16 images: top-1 {report['center_crop']['top1']:.4f}  top-5 {report['center_crop']['top5']:.4f}",
                    single.output)
