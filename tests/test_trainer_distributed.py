"""Data-parallel training on the CPU (gloo): `--nproc 2` trains like one process on the same global batches,
both replicas end with the same weights, and a 2-process run resumes exactly, after Ctrl-C too."""
import json
import os
import shutil
import signal

import pytest
import torch
from click.testing import CliRunner

import trainer.train
from alexlabel.cli import main
from common.interrupt import Interrupted
from schemas.checkpoint import load_checkpoint
from schemas.transform import Preprocess
from trainer.config import TrainConfig
from trainer.data import list_image_folder, loader
from trainer.distributed import spawn
from trainer.evaluate import predict
from trainer.models import build_model
from trainer.train import train

# Global batches of 8: 4 images per process and step.
OPTIONS = ["--arch", "alexnet_small", "--width", "8", "--dropout", "0", "--image-size", "32", "--epochs", "2",
           "--batch-size", "8", "--workers", "0", "--optimizer", "sgd", "--lr", "0.02", "--weight-decay", "0"]
RECIPE = dict(arch="alexnet_small", arch_kwargs={"width": 8, "dropout": 0.0}, image_size=32, epochs=2, batch_size=8,
              workers=0, optimizer="sgd", lr=0.02, weight_decay=0.0)
# Every per-process random draw on: dropout and PCA lighting come from each process's own RNG.
NOISY = {**RECIPE, "arch_kwargs": {"width": 8, "dropout": 0.5}, "pca_lighting": 0.1, "optimizer": "adamw",
         "lr": 1e-3}


def last(output) -> dict:
    return torch.load(os.path.join(output, "last.pt"), weights_only=True)


def val_loss_of(weights: dict, sample_dir: str) -> float:
    """Mean cross-entropy of these weights over the whole val set, in this one process."""
    model = build_model("alexnet_small", 8, weights, width=8, dropout=0.0)
    classes, samples = list_image_folder(os.path.join(sample_dir, "val"))
    pre = Preprocess(resize=37, crop=32)
    logits, labels = predict(model, loader(samples, pre.eval_tensor, pre.resize, 16, 0), pre, torch.device("cpu"),
                             None)
    return torch.nn.functional.cross_entropy(logits, labels).item()


def test_two_processes_train_like_one_on_the_same_global_batches(sample_dir, tmp_path, capfd):
    data, out = str(tmp_path / "data"), tmp_path / "ddp"
    shutil.copytree(sample_dir, data, ignore=shutil.ignore_patterns("bucket*"))
    shutil.copy(f"{data}/train/circle/circle_0000.jpg", f"{data}/train/circle/circle_0004.jpg")
    # 33 images: each epoch ends with a batch of one, so rank 1's share is empty and it steps with none.
    result = CliRunner().invoke(main, ["train", "--data", data, "--output", str(out), "--nproc", "2", *OPTIONS])
    assert result.exit_code == 0, result.output
    manifest = load_checkpoint(str(out / "model.pt"))[1]
    assert f"wrote {out}/model.pt: val top-1 {manifest.metrics['val_top1']:.3f}" in result.output
    printed, warned = capfd.readouterr()  # the spawned processes' own stdout and stderr: rank 0 alone prints
    assert printed.count("x 2 processes; validating on 16") == 1
    assert [line for line in warned.splitlines() if "processes" in line] == [
        "warning: 2 training processes on one CPU are slower than one, which already uses every core; train in "
        "one process (leave out --nproc)"]
    assert printed.count("epoch 1/2:") == 1 and printed.count("epoch 2/2:") == 1
    assert sorted(os.listdir(out)) == ["last.pt", "metrics.jsonl", "model.pt"]
    assert manifest.metrics["val_images"] == 16 and manifest.arch_kwargs == {"dropout": 0.0, "width": 8}

    saved = last(out)
    assert len(saved["rng"]) == 2 and not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    # Each process took every other image of each batch and DDP averaged the gradients: one process with
    # the whole batches takes the same steps, up to float rounding. On two threads its batches split over them as
    # they split over the processes, so it sums in the same order; on one (where an earlier test may have left
    # torch) it sums in another order, and the weights came out 2e-4 apart (1e-7 on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(TrainConfig(data=data, output=str(tmp_path / "one"), **RECIPE))
    finally:
        torch.set_num_threads(threads)
    ddp, one = saved["model"], last(tmp_path / "one")["model"]
    torch.manual_seed(0)
    start = build_model("alexnet_small", 8, width=8, dropout=0.0).state_dict()
    assert max((ddp[k] - start[k]).abs().max() for k in ddp) > 0.01  # they did move
    # Wrong averaging or wrong batches differ by about as much as the weights moved (> 0.01).
    assert max((ddp[k] - one[k]).abs().max() for k in ddp) < 1e-4

    # Rank 1 validated its half of the val set with its own replica, and the logits were gathered: the
    # val loss it helped compute matches rank 0's final weights on the whole set only if both are equal.
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["val_loss"] == pytest.approx(val_loss_of(ddp, sample_dir), rel=1e-5)


@pytest.fixture(scope="module")
def whole(sample_dir, tmp_path_factory) -> str:
    """NOISY in 2 processes, start to finish in one go."""
    out = str(tmp_path_factory.mktemp("whole"))
    manifest = spawn(train, TrainConfig(data=sample_dir, output=out, **NOISY), 2)
    assert manifest.model_version == load_checkpoint(f"{out}/model.pt")[1].model_version  # rank 0's result
    return out


def assert_same_run(whole: str, parts: str) -> None:
    a, b = last(whole), last(parts)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(ra["torch"], rb["torch"]) for ra, rb in zip(a["rng"], b["rng"], strict=True))
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert [r["val_loss"] for r in map(json.loads, open(f"{whole}/metrics.jsonl"))] == \
        [r["val_loss"] for r in map(json.loads, open(f"{parts}/metrics.jsonl"))]


def test_two_process_run_resumes_mid_epoch_exactly(sample_dir, whole, tmp_path):
    parts = str(tmp_path / "parts")
    assert spawn(train, TrainConfig(data=sample_dir, output=parts, stop_after_steps=6, **NOISY), 2) is not None
    assert json.loads(last(parts)["state"])["step"] == 2  # in epoch 2
    spawn(train, TrainConfig(data=sample_dir, output=parts, resume=True, **NOISY), 2)
    assert_same_run(whole, parts)

    result = CliRunner().invoke(main, ["train", "--data", sample_dir, "--output", parts, "--resume", *OPTIONS])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --resume: {parts}/last.pt does not fit this run's options (it was written by 2 processes, this "
        "run has 1); resume with the options it was trained with"]


def train_with_ctrl_c_in_rank_1_during_step_6(cfg: TrainConfig):
    """train(cfg), in a process of spawn's; the process of rank 1 sends itself Ctrl-C during its sixth step."""
    real_step, steps = trainer.train.train_step, []

    def step(t, *args):
        steps.append(1)
        if t.world.rank == 1 and len(steps) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(t, *args)

    trainer.train.train_step = step
    return train(cfg)


def test_ctrl_c_in_one_process_stops_all_at_the_same_step_and_resume_is_exact(sample_dir, whole, tmp_path):
    parts = str(tmp_path / "parts")
    with pytest.raises(Interrupted, match=f"^interrupted: saved {parts}/last.pt at epoch 2, step 2; continue with "
                                          "--resume$"):
        spawn(train_with_ctrl_c_in_rank_1_during_step_6, TrainConfig(data=sample_dir, output=parts, **NOISY), 2)
    saved = last(parts)
    assert len(saved["rng"]) == 2 and json.loads(saved["state"])["step"] == 2
    spawn(train, TrainConfig(data=sample_dir, output=parts, resume=True, **NOISY), 2)
    assert_same_run(whole, parts)


def test_a_bad_option_in_the_processes_is_one_line(sample_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", sample_dir, "--output", str(tmp_path), "--nproc", "2",
                                       *OPTIONS, "--batch-size", "1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: 2 processes need --batch-size and the val set to be at least 2"]


def test_two_processes_train_from_shards_in_equal_steps_and_resume_exactly(sample_dir, tmp_path):
    from schemas.shards import write_shards

    classes, samples = list_image_folder(os.path.join(sample_dir, "train"))
    shard_set, _ = write_shards(samples, classes, str(tmp_path / "data" / "train"), shard_bytes=14_000)
    write_shards(list_image_folder(os.path.join(sample_dir, "val"), classes)[1], classes,
                 str(tmp_path / "data" / "val"), shard_bytes=14_000)
    assert len(shard_set.shards) % 2 and len(shard_set.shards) > 2  # the processes are dealt unequal shares
    recipe = {**NOISY, "data": str(tmp_path / "data"), "embedding_dim": 0}
    spawn(train, TrainConfig(output=str(tmp_path / "whole"), **recipe), 2)
    steps = [json.loads(line) for line in open(tmp_path / "whole" / "metrics.jsonl")]
    assert [r["epoch"] for r in steps] == [1, 2]  # no process waited on another at an epoch's end
    spawn(train, TrainConfig(output=str(tmp_path / "parts"), stop_after_steps=3, **recipe), 2)
    spawn(train, TrainConfig(output=str(tmp_path / "parts"), resume=True, **recipe), 2)
    assert_same_run(str(tmp_path / "whole"), str(tmp_path / "parts"))
