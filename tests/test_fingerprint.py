"""The pixel fingerprint (beam_pipeline/fingerprint.py): the same for a mirror image, close for the edits a photo
goes through, far for another photo, and the same in every precision the model runs in."""
import numpy as np
import pytest
import torch
from PIL import Image

from alexlabel.sample_data import CLASSES, jpeg_bytes, near_copies, sample_image
from beam_pipeline.fingerprint import DIM, fingerprints
from schemas.transform import Preprocess, eval_tensor_from_bytes

PRE = Preprocess(resize=73, crop=64)


def pixels(data: bytes) -> torch.Tensor:
    return eval_tensor_from_bytes(data, PRE)[0]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [sample_image(rng, CLASSES[i % len(CLASSES)]) for i in range(24)]


def test_a_mirror_image_has_the_same_fingerprint():
    x = torch.randint(0, 256, (3, 3, 64, 48), dtype=torch.uint8)
    a, b = fingerprints(x), fingerprints(x.flip(-1))
    assert a.shape == (3, DIM) and torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.allclose(a, b, atol=1e-6)
    assert (a @ fingerprints(x.flip(-2)).T).diag().max() < 0.99  # upside down is another picture
    flat = torch.full((2, 3, 64, 48), 37, dtype=torch.uint8)
    flat[1, 0] = 200
    assert not fingerprints(flat).any()  # no direction to compare: like no other image


def test_copies_are_close_and_other_photos_far(photos):
    originals = fingerprints(torch.stack([pixels(jpeg_bytes(p)) for p in photos]))
    for kind in ("requality", "resized", "cropped", "flipped", "text"):
        copies = fingerprints(torch.stack([pixels(near_copies(p)[kind]) for p in photos]))
        similarity = (originals * copies).sum(1)
        assert similarity.median() > 0.97 and similarity.min() > (0.9 if kind == "cropped" else 0.97), kind
    others = originals @ originals.T
    assert others.fill_diagonal_(0).max() < 0.95


def test_brightness_and_contrast_do_not_matter_nor_the_precision(photos):
    x = torch.stack([pixels(jpeg_bytes(p)) for p in photos[:4]])
    a = fingerprints(x)
    dimmer = fingerprints((x.float() * 0.7 + 20).round())
    assert (a * dimmer).sum(1).min() > 0.999
    for same in (x.bfloat16(), x.float().contiguous(memory_format=torch.channels_last)):
        assert torch.allclose(fingerprints(same), a, atol=1e-5)
