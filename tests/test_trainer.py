"""Training on generated data: the loop, the exported checkpoint, evaluation and bad data."""
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner
from commands import invoke, one_line_error

from alexlabel.cli import main
from common.errors import UserError
from schemas.checkpoint import load_checkpoint
from trainer.calibrate import expected_calibration_error, fit_temperature
from trainer.data import DataError, list_image_folder
from trainer.evaluate import format_confusion
from trainer.models import build_model
from trainer.train import TrainConfig


def test_exported_checkpoint_carries_the_inference_contract(checkpoint, sample_dir):
    _, manifest = load_checkpoint(checkpoint)
    assert manifest.arch == "alexnet_small" and manifest.arch_kwargs == {"width": 8, "dropout": 0.0}
    assert manifest.class_names == sorted(os.listdir(os.path.join(sample_dir, "train")))
    assert (manifest.preprocess.crop, manifest.preprocess.resize) == (32, 37)
    assert manifest.temperature > 0 and 0 <= manifest.metrics["val_top1"] <= 1
    assert {"ece_before", "ece_after", "val_top5"} <= manifest.metrics.keys()
    assert manifest.provenance["recipe"]["epochs"] == 1 and manifest.provenance["torch"] == torch.__version__
    out = os.path.dirname(checkpoint)
    assert sorted(os.listdir(out)) == ["last.pt", "metrics.jsonl", "model.pt"]
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["images_per_second"] > 0


def test_temperature_fit_lowers_calibration_error_of_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (400,))
    logits = torch.randn(400, 4)
    logits[torch.arange(400), labels] += 1.0  # right about 60% of the time...
    logits *= 8  # ...but nearly always certain
    t = fit_temperature(logits, labels)
    assert t > 2
    assert expected_calibration_error(logits, labels, t) < expected_calibration_error(logits, labels) / 2


def test_evaluate_prints_accuracy_and_the_confusion_matrix_and_writes_json(checkpoint, sample_dir, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", checkpoint, "--data",
                                       os.path.join(sample_dir, "val"), "--json", str(report), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "16 images: top-1" in result.output
    data = json.loads(report.read_text())
    assert data["images"] == 16 and len(data["confusion"]) == 8 and sum(map(sum, data["confusion"])) == 16
    lines = result.output.splitlines()
    at = lines.index("confusion matrix (rows: truth, columns: predicted)")
    matrix = lines[at + 1:at + 10]
    assert matrix[0].split() == ["circ", "cros", "diam", "ring", "squa", "star", "stri", "tria"]
    assert [row.split()[0] for row in matrix[1:]] == list(data["per_class"])
    assert [[int(n) for n in row.split()[1:]] for row in matrix[1:]] == data["confusion"]
    assert len({len(line) for line in matrix}) == 1 and lines[at + 10:] == []  # aligned, and last


def test_confusion_matrix_numbers_classes_whose_cut_names_collide():
    assert format_confusion([[3, 1], [0, 12345]], ["tabby_cat", "tabby_catamount"]).splitlines() == [
        "confusion matrix (rows: truth, columns: predicted)",
        "                      0     1",
        "0 tabby_cat           3     1",
        "1 tabby_catamount     0 12345"]
    assert format_confusion([[0] * 41] * 41, [f"c{i}" for i in range(41)]) == \
        "confusion matrix: 41 classes are too many to print; --json writes it"


def test_empty_class_folder_stops_before_training(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "dogs").mkdir(parents=True)
    (tmp_path / "train" / "dogs" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="train/cats has no images"):
        list_image_folder(str(tmp_path / "train"))
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: class folder {tmp_path}/train/cats has no images; "
                                                  "add images or remove the folder"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, words", [("--amp", "fp8", "auto, bf16, fp16 or off"),
                                                  ("--optimizer", "adam", "sgd or adamw"),
                                                  ("--schedule", "linear", "cosine, step or plateau")])
def test_an_unknown_option_word_is_one_line_naming_the_words_before_any_work(option, value, words, tmp_path):
    message = f"unknown {option} {value!r}; use {words}"
    # no data at --data: validation comes first
    result = invoke("train", "--data", tmp_path / "none", "--output", tmp_path / "out", option, value)
    assert one_line_error(result) == f"Error: {message}"
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError) as raised:
        TrainConfig(output="unused", **{option.removeprefix("--"): value}).validate()
    assert str(raised.value) == message
    assert words.replace(", ", "|").replace(" or ", "|") in invoke("train", "--help").output


def train_small(sample_dir, output, *options):
    return CliRunner().invoke(main, [
        "train", "--data", sample_dir, "--output", str(output), "--arch", "alexnet_small", "--width", "8",
        "--dropout", "0", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
        "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "0", *options])


def weight_change(output) -> float:
    """L2 norm of all weights' change from the seed-0 initialization train() starts from."""
    torch.manual_seed(0)
    start = build_model("alexnet_small", 8, width=8, dropout=0.0).state_dict()
    end = torch.load(os.path.join(output, "last.pt"), weights_only=True)["model"]
    return math.sqrt(sum((end[k] - start[k]).square().sum().item() for k in start))


def test_train_prints_the_calibration_error_before_and_after_the_temperature(sample_dir, tmp_path):
    result = train_small(sample_dir, tmp_path)
    assert result.exit_code == 0, result.output
    manifest = load_checkpoint(str(tmp_path / "model.pt"))[1]
    m = manifest.metrics
    assert f"temperature {manifest.temperature:.2f} (expected calibration error {m['ece_before']:.3f} -> " \
           f"{m['ece_after']:.3f})" in result.output.splitlines()[-1]
    assert m["ece_before"] != m["ece_after"]


def test_clip_grad_norm_bounds_every_update(sample_dir, tmp_path):
    clipped = train_small(sample_dir, tmp_path / "clipped", "--clip-grad-norm", "0.001")
    assert clipped.exit_code == 0, clipped.output
    free = train_small(sample_dir, tmp_path / "free")
    assert free.exit_code == 0, free.output
    # SGD with momentum 0.9 moves the weights by at most lr * |g| / (1 - 0.9) per step: 4 steps, |g| <= 0.001.
    bound = 4 * 0.05 * 0.001 / (1 - 0.9)
    assert 0 < weight_change(tmp_path / "clipped") <= bound
    assert weight_change(tmp_path / "free") > 10 * bound


def test_fp16_amp_keeps_its_gradient_scaler_in_last_pt(sample_dir, tmp_path):
    result = train_small(sample_dir, tmp_path, "--amp", "fp16", "--clip-grad-norm", "1")
    assert result.exit_code == 0, result.output
    assert "cpu float16" in result.output
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert 0 < saved["scaler"]["scale"] <= 2.0**16
    # steps whose fp16 gradients overflowed were skipped, and the schedule counted only the applied ones
    assert saved["scheduler"]["last_epoch"] == 4 - math.log2(2.0**16 / saved["scaler"]["scale"])
