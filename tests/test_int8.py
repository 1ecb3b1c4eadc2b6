"""`label --precision int8`: the int8 network's numbers against fp32, the labeling job with it, its ranges fitted
and stored with the checkpoint, and the refusals."""
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from beam_pipeline.int8 import build_int8, has_vnni
from beam_pipeline.model_handler import load_classifier
from beam_pipeline.raw_pixels import fold_normalization
from schemas.checkpoint import INT8_KEY, load_checkpoint, save_checkpoint, split_state
from schemas.transform import Preprocess
from tests.commands import invoke, one_line_error
from trainer.int8_ranges import activation_ranges
from trainer.models import AlexNet2012, quantization_units


def pixels(n: int, crop: int, seed: int) -> torch.Tensor:
    """Smooth random images (as photos are, unlike noise): uint8 NCHW, channels_last, as the pipeline batches."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, crop // 8, crop // 8, generator=g) * 255
    x = torch.nn.functional.interpolate(small, size=(crop, crop), mode="bilinear")
    return x.round().clamp(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("vnni", [False, has_vnni()], ids=["7-bit", "this-cpu"])
def test_first_convolution_matches_fp32_on_every_band(vnni):
    """The stem's int8 convolution and its re-done edge bands (the folded normalization's border correction) give
    fp32's map to within a few quantization steps, on the edges as inside. The 7-bit path runs on every x86 CPU;
    the full 8-bit one only where VNNI is, so that case is this CPU's own path."""
    torch.manual_seed(0)
    pre = Preprocess(resize=256, crop=224)
    model = fold_normalization(AlexNet2012(num_classes=10).eval(), pre)
    calibration = [pixels(8, 224, seed) for seed in (1, 2)]
    ranges, _ = activation_ranges(model, (x.float() for x in calibration))
    net = build_int8(model, ranges, pre.crop, vnni=vnni)
    x = pixels(4, 224, seed=3)
    with torch.inference_mode():
        expected = torch.relu(model.features[0](x.float()))
        scale, zero_point = net.features[0].out
        got = (net.features[0](x).float() - zero_point) * scale
    error = (got - expected).abs()
    steps = error / scale
    assert steps.amax() <= 4, steps.amax()
    edge = torch.zeros_like(error, dtype=torch.bool)
    edge[..., :1, :] = edge[..., -1:, :] = edge[..., :, :1] = edge[..., :, -1:] = True
    assert error[edge].mean() <= 2 * error[~edge].mean() + scale  # the bands are computed, not left wrong


def test_every_layer_kind_runs_and_tracks_fp32():
    """AlexNet2012 (local response norm in float between int8 layers, a separable uint8 max pool, an identity
    adaptive pool): logits within a few percent of fp32's, and features_and_logits reads it as it reads any ARCHS
    network."""
    from trainer.models import features_and_logits

    torch.manual_seed(0)
    pre = Preprocess(resize=256, crop=224)
    model = fold_normalization(AlexNet2012(num_classes=10).eval(), pre)
    ranges, _ = activation_ranges(model, (pixels(8, 224, seed).float() for seed in (1, 2)))
    assert len(ranges) == len(quantization_units(model)) and ranges[:, 0].isnan().sum() == 4  # pools, last
    net = build_int8(model, ranges, pre.crop)
    x = pixels(8, 224, seed=4)
    with torch.inference_mode():
        features, logits = features_and_logits(net, x)
        expected_features, expected = features_and_logits(model, x.float())
    assert logits.dtype == torch.float32 and torch.equal(net(x), logits)
    assert (logits - expected).norm() / expected.norm() < 0.1
    assert torch.nn.functional.cosine_similarity(features, expected_features).min() > 0.98


def label(checkpoint, sample_dir, out, *args):
    result = invoke("label", "--input", f"{sample_dir}/bucket/**", "--checkpoint", checkpoint, "--output", out, *args)
    assert result.exit_code == 0, result.output
    return pq.read_table(f"{out}/labels").to_pandas().set_index("uri").sort_index()


def test_label_in_int8_agrees_with_fp32(checkpoint, sample_dir, tmp_path):
    """The whole job with --precision int8: every image accounted for, the same model version, top-1 as fp32's on
    nearly every image, embeddings along the same directions; the runs table says which precision ran."""
    fp32 = label(checkpoint, sample_dir, tmp_path / "fp32", "--precision", "fp32", "--embeddings")
    int8 = label(checkpoint, sample_dir, tmp_path / "int8", "--precision", "int8", "--embeddings")
    assert list(int8.index) == list(fp32.index) and set(int8.model_version) == set(fp32.model_version)
    assert (int8.label == fp32.label).mean() >= 0.9
    assert (int8.confidence - fp32.confidence).abs().max() < 0.2
    vectors = {name: pq.read_table(tmp_path / name / "embeddings").to_pandas().set_index("uri").sort_index()
               for name in ("fp32", "int8")}
    a, b = (np.stack(vectors[name].embedding).astype(np.float32) for name in ("fp32", "int8"))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9, cosine.min()
    runs = pq.read_table(tmp_path / "int8" / "runs").to_pylist()
    assert json.loads(runs[0]["options_json"])["precision"] == "int8"


def test_training_and_import_fit_the_ranges_into_the_model_version(checkpoint):
    """The trainer fits the ranges with the projection, on training images, into the state dict: the weights hash
    (the model version) covers them, as it covers the projection."""
    state_dict, manifest = load_checkpoint(checkpoint)
    _, _, ranges = split_state(state_dict)
    assert manifest.int8["source"] == "training set" and manifest.int8["fitted_on"] > 0
    assert ranges.dtype == torch.float64 and INT8_KEY in state_dict
    assert (ranges[~ranges[:, 0].isnan(), 0] > 0).all()


def test_int8_needs_a_checkpoint_with_ranges(checkpoint, sample_dir, tmp_path):
    state_dict, manifest = load_checkpoint(checkpoint)
    weights, projection, _ = split_state(state_dict)
    bare = str(tmp_path / "bare.pt")
    save_checkpoint(bare, {k: v for k, v in state_dict.items() if k != INT8_KEY}, replace(manifest, int8={}))
    result = invoke("label", "--input", f"{sample_dir}/bucket/**", "--checkpoint", bare, "--output", tmp_path / "out",
                    "--precision", "int8")
    assert one_line_error(result) == (
        f"Error: --precision int8 needs a checkpoint with int8 ranges, and {bare} has none; fit them with `alexlabel "
        f"refit {bare} --fit-on FOLDER --output NEW.pt`")
    assert not (tmp_path / "out").exists()
    assert load_classifier(bare, "cpu", "fp32").dtype == torch.float32  # the other precisions do not need them
