"""Training on generated data: the loop, the exported checkpoint, evaluation and bad data."""
import json
import math
import os
import shutil

import pytest
import torch
from click.testing import CliRunner
from commands import invoke, one_line_error

import trainer.checkpoints
from alexlabel.cli import main
from common.errors import UserError
from schemas.checkpoint import load_checkpoint
from trainer.calibrate import calibration_warning, expected_calibration_error, fit_temperature
from trainer.config import ARCH_DEFAULTS, TrainConfig
from trainer.data import DataError, list_image_folder
from trainer.evaluate import format_confusion
from trainer.models import ARCHS, build_model
from trainer.train import divergence


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


def test_evaluate_on_a_subset_of_the_models_classes_says_which_differ(checkpoint, sample_dir, tmp_path):
    data = tmp_path / "ds1"
    for name in ("cross", "star"):
        shutil.copytree(os.path.join(sample_dir, "val", name), data / name)
    shutil.copytree(os.path.join(sample_dir, "val", "circle"), data / "box")  # a class the model does not have
    result = invoke("evaluate", "--checkpoint", checkpoint, "--data", data, "--json", tmp_path / "report.json",
                    "--workers", 0)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"note: the classes of {data} differ from the model's (missing circle, diamond, ring, square, stripes, "
        "triangle; extra box); evaluating those in both"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 4 and list(report["per_class"]) == ["cross", "star"]
    classes = load_checkpoint(checkpoint)[1].class_names  # each image counted as its class's row in the model
    assert [sum(row) for row in report["confusion"]] == [2 if c in ("cross", "star") else 0 for c in classes]


def test_evaluate_on_none_of_the_models_classes_is_one_line_listing_them(checkpoint, sample_dir, tmp_path):
    shutil.copytree(os.path.join(sample_dir, "val", "circle"), tmp_path / "ds1" / "box")
    result = invoke("evaluate", "--checkpoint", checkpoint, "--data", tmp_path / "ds1")
    assert one_line_error(result) == (f"Error: the classes of {tmp_path}/ds1 differ from the model's: missing circle, "
                                      "cross, diamond, ring, square, star, stripes, triangle; extra box")


def test_evaluate_refuses_a_json_path_that_is_a_directory_before_any_work(tmp_path):
    result = invoke("evaluate", "--checkpoint", tmp_path / "none.pt", "--data", tmp_path, "--json", tmp_path)
    assert one_line_error(result) == f"Error: --json {tmp_path} is a directory; give the path of the file to write"


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


@pytest.mark.parametrize("held", [["model.pt"], ["last.pt"], ["model.pt", "last.pt"]])
def test_an_output_holding_a_trained_model_is_refused_before_any_work(held, tmp_path):
    for name in held:
        (tmp_path / name).write_bytes(b"trained")
    result = invoke("train", "--data", tmp_path / "none", "--output", tmp_path)  # no data there: checked first
    assert one_line_error(result) == (f"Error: --output {tmp_path} already holds {' and '.join(held)}; continue "
                                      "that run with --resume, or train anew over it with --overwrite")
    assert all((tmp_path / name).read_bytes() == b"trained" for name in held)


def test_overwrite_trains_anew_over_an_earlier_run(sample_dir, tmp_path):
    assert train_small(sample_dir, tmp_path).exit_code == 0
    first = load_checkpoint(str(tmp_path / "model.pt"))[1].provenance["run_id"]
    assert "already holds model.pt and last.pt" in one_line_error(train_small(sample_dir, tmp_path))
    assert one_line_error(train_small(sample_dir, tmp_path, "--overwrite", "--resume")) == (
        "Error: --resume continues the run in --output and --overwrite starts anew over it; give one")
    again = train_small(sample_dir, tmp_path, "--overwrite")
    assert again.exit_code == 0, again.output
    assert load_checkpoint(str(tmp_path / "model.pt"))[1].provenance["run_id"] != first


def test_an_output_that_is_a_file_is_refused_before_training(sample_dir, tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"a file")
    assert one_line_error(train_small(sample_dir, target)) == (
        f"Error: --output {target} is a file; give the folder to write model.pt, last.pt and metrics.jsonl in")
    assert target.read_bytes() == b"a file"


def test_each_arch_has_defaults_that_train_and_help_states_them():
    recipe = ("image_size", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs",
              "label_smoothing")
    assert ARCH_DEFAULTS.keys() == ARCHS.keys()
    for arch in ("alexnet", "alexnet2012"):  # the paper's
        cfg = TrainConfig(output="unused", arch=arch)
        assert [getattr(cfg, name) for name in recipe] == [224, 90, 128, "sgd", 0.01, 5e-4, 0.0, 0.0]
    small = TrainConfig(output="unused", arch="alexnet_small")  # the demo's: SGD at lr 0.01 diverged on it
    assert [getattr(small, name) for name in recipe] == [64, 20, 32, "adamw", 1e-3, 0.05, 1.0, 0.1]
    given = TrainConfig(output="unused", arch="alexnet_small", optimizer="sgd", warmup_epochs=0, label_smoothing=0)
    assert (given.optimizer, given.warmup_epochs, given.label_smoothing, given.lr) == ("sgd", 0, 0, 1e-3)
    text = " ".join(invoke("train", "--help").output.split())
    assert "--optimizer sgd|adamw [default: sgd for alexnet, alexnet2012; adamw for alexnet_small]" in text
    assert "--lr FLOAT [default: 0.01 for alexnet, alexnet2012; 0.001 for alexnet_small]" in text
    assert "[default: 224 for alexnet, alexnet2012; 64 for alexnet_small]" in text


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
           f"{m['ece_after']:.3f})" in result.stdout.splitlines()[-1]
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


def test_fp16_amp_keeps_its_gradient_scaler_in_last_pt_and_warns_once_that_bf16_is_faster_on_a_cpu(sample_dir,
                                                                                                    tmp_path):
    result = train_small(sample_dir, tmp_path, "--amp", "fp16", "--clip-grad-norm", "1")
    assert result.exit_code == 0, result.output
    assert "cpu float16" in result.output
    assert [line for line in result.stderr.splitlines() if "fp16" in line] == [
        "warning: --amp fp16 is slow on a CPU, which lacks fast fp16 kernels; use --amp bf16"]
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert 0 < saved["scaler"]["scale"] <= 2.0**16
    # steps whose fp16 gradients overflowed were skipped, and the schedule counted only the applied ones
    assert saved["scheduler"]["last_epoch"] == 4 - math.log2(2.0**16 / saved["scaler"]["scale"])


def test_a_diverging_loss_is_a_warning_naming_the_fix(sample_dir, tmp_path):
    result = train_small(sample_dir, tmp_path, "--lr", "1000", "--epochs", "2")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "training loss" in line]
    assert warned == [f"warning: epoch {e} training loss nan is not finite: training is diverging; lower --lr, or use "
                      "--optimizer adamw" for e in (1, 2)]
    rows = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 5.9}]
    assert divergence(rows) is None
    assert divergence([*rows, {"epoch": 3, "loss": 6.5}]) == (
        "epoch 3 training loss 6.5 is over 3x epoch 1's (2): training is diverging; lower --lr, or use "
        "--optimizer adamw")


def test_an_untrustworthy_temperature_is_a_warning(sample_dir, tmp_path, monkeypatch):
    metrics = {"ece_before": 0.004, "ece_after": 0.006, "val_top1": 0.12, "val_images": 200}
    assert calibration_warning(592.5, metrics) == (
        "the fitted temperature 592 is extreme (outside 0.05-20) and made the expected calibration error worse "
        "(0.004 -> 0.006), at val top-1 0.120 on 200 images: its confidences are unreliable; train until val top-1 "
        "is well above chance, or validate on more images")
    assert calibration_warning(1.5, {**metrics, "ece_after": 0.002}) is None
    assert calibration_warning(0.01, {**metrics, "ece_after": 0.002}).startswith(
        "the fitted temperature 0.01 is extreme (outside 0.05-20), at val top-1")
    monkeypatch.setattr(trainer.checkpoints, "fit_temperature", lambda *_: 592.5)
    result = train_small(sample_dir, tmp_path)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "temperature" in line] == [
        f"warning: {calibration_warning(592.5, load_checkpoint(str(tmp_path / 'model.pt'))[1].metrics)}"]
    assert "temperature 592.50" in result.stdout.splitlines()[-1]
