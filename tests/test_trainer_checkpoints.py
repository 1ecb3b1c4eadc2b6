"""Training checkpoints: exact --resume (at an epoch end, mid-epoch, after a crash or Ctrl-C) and the best-k
files."""
import json
import os
import signal

import pytest
import torch
from click.testing import CliRunner

import trainer.train
from alexlabel.cli import main
from common.interrupt import Interrupted
from schemas.checkpoint import load_checkpoint
from trainer.checkpoints import rank_best
from trainer.config import TrainConfig
from trainer.train import train

# 32 training images in batches of 8: 4 steps per epoch.
SMALL = dict(arch="alexnet_small", arch_kwargs={"width": 8, "dropout": 0.0}, image_size=32, epochs=3, batch_size=8,
             optimizer="adamw", lr=1e-3, workers=0)
# Everything that draws random numbers during training: dropout, PCA lighting, random crops and flips.
NOISY = {**SMALL, "arch_kwargs": {"width": 8, "dropout": 0.5}, "pca_lighting": 0.1, "warmup_epochs": 1}


def last(output) -> dict:
    return torch.load(os.path.join(output, "last.pt"), weights_only=True)


def metrics(output) -> list[dict]:
    with open(os.path.join(output, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_training(a, b) -> None:
    """Same weights, optimizer, schedule, RNGs and validation results; only timings may differ."""
    la, lb = last(a), last(b)
    assert la["model"].keys() == lb["model"].keys()
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    for p in la["optimizer"]["state"]:
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(lb["optimizer"]["state"][p][k]))
                   for k, v in la["optimizer"]["state"][p].items())
    assert la["scheduler"] == lb["scheduler"] and len(la["rng"]) == len(lb["rng"])
    assert all(torch.equal(ra["torch"], rb["torch"]) and ra["python"] == rb["python"]
               for ra, rb in zip(la["rng"], lb["rng"], strict=True))
    fields = ("epoch", "val_loss", "val_top1", "val_top5", "lr")
    assert [[r[f] for f in fields] for r in metrics(a)] == [[r[f] for f in fields] for r in metrics(b)]
    assert load_checkpoint(os.path.join(a, "model.pt"))[1].model_version == \
        load_checkpoint(os.path.join(b, "model.pt"))[1].model_version


@pytest.fixture(scope="module")
def uninterrupted(sample_dir, tmp_path_factory):
    """Reference runs of SMALL and NOISY, start to finish in one go."""
    runs = {}
    for name, recipe in (("small", SMALL), ("noisy", NOISY)):
        runs[name] = str(tmp_path_factory.mktemp(name))
        train(TrainConfig(data=sample_dir, output=runs[name], **recipe))
    return runs


def test_resume_after_epoch_two_matches_the_uninterrupted_run(sample_dir, uninterrupted, tmp_path):
    out = str(tmp_path)
    assert train(TrainConfig(data=sample_dir, output=out, stop_after_steps=8, **SMALL)) is not None
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    assert json.loads(last(out)["state"])["epoch"] == 2
    train(TrainConfig(data=sample_dir, output=out, resume=True, **SMALL))
    assert_same_training(uninterrupted["small"], out)


def test_resume_mid_epoch_with_other_workers_matches_the_uninterrupted_run(sample_dir, uninterrupted, tmp_path):
    out = str(tmp_path)
    assert train(TrainConfig(data=sample_dir, output=out, stop_after_steps=6, **NOISY)) is not None
    state = json.loads(last(out)["state"])
    assert (state["epoch"], state["step"]) == (1, 2)
    # Shuffle order and crops depend on (seed, epoch, position) only, not on which process decodes.
    train(TrainConfig(data=sample_dir, output=out, resume=True, **{**NOISY, "workers": 1}))
    assert_same_training(uninterrupted["noisy"], out)


def test_save_every_steps_lets_a_crashed_run_resume_from_its_last_step(sample_dir, uninterrupted, tmp_path,
                                                                       monkeypatch):
    calls = []

    def crash_in_second_validation(*args):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated crash in epoch 2's validation")
        return real_predict(*args)

    real_predict = trainer.train.predict
    monkeypatch.setattr(trainer.train, "predict", crash_in_second_validation)
    out = str(tmp_path)
    with pytest.raises(MemoryError):
        train(TrainConfig(data=sample_dir, output=out, save_every_steps=3, **NOISY))
    state = json.loads(last(out)["state"])
    assert (state["epoch"], state["step"]) == (1, 2)  # step 6 of 8: the last multiple of 3 before the crash
    monkeypatch.setattr(trainer.train, "predict", real_predict)
    train(TrainConfig(data=sample_dir, output=out, save_every_steps=3, resume=True, **NOISY))
    assert_same_training(uninterrupted["noisy"], out)


def test_ctrl_c_saves_the_last_whole_step_and_resume_matches_the_uninterrupted_run(sample_dir, uninterrupted,
                                                                                   tmp_path, monkeypatch):
    steps = []

    def ctrl_c_during_step_six(*args):
        steps.append(1)
        if len(steps) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    real_step = trainer.train.train_step
    monkeypatch.setattr(trainer.train, "train_step", ctrl_c_during_step_six)
    out = str(tmp_path)
    with pytest.raises(Interrupted) as stopped:
        train(TrainConfig(data=sample_dir, output=out, **NOISY))
    assert str(stopped.value) == f"interrupted: saved {out}/last.pt at epoch 2, step 2; continue with --resume"
    assert len(steps) == 6 and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # step 6 finished
    state = json.loads(last(out)["state"])
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(trainer.train, "train_step", real_step)
    train(TrainConfig(data=sample_dir, output=out, resume=True, **NOISY))
    assert_same_training(uninterrupted["noisy"], out)


def test_resume_without_last_pt_is_one_line(tmp_path, sample_dir):
    result = CliRunner().invoke(main, ["train", "--data", sample_dir, "--output", str(tmp_path), "--resume",
                                       "--arch", "alexnet_small", "--image-size", "32", "--workers", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --resume: {tmp_path}/last.pt does not exist; train without --resume first"]


def test_keep_best_keeps_only_the_k_best_epochs(sample_dir, tmp_path):
    out = str(tmp_path)
    manifest = train(TrainConfig(data=sample_dir, output=out, keep_best=2, **{**SMALL, "epochs": 5}))
    rows = metrics(out)
    ranked = sorted(rows, key=lambda r: -r["val_top1"])[:2]  # ties: the earlier epoch stays
    expected = {f"best-epoch{r['epoch']:03d}-top1-{r['val_top1']:.3f}.pt" for r in ranked}
    assert {n for n in os.listdir(out) if n.startswith("best-")} == expected
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temp files left behind
    for r in ranked:
        _, kept = load_checkpoint(os.path.join(out, f"best-epoch{r['epoch']:03d}-top1-{r['val_top1']:.3f}.pt"))
        assert kept.metrics["val_top1"] == r["val_top1"]
    assert manifest.metrics["val_top1"] == ranked[0]["val_top1"]
    assert manifest.model_version == load_checkpoint(
        os.path.join(out, f"best-epoch{ranked[0]['epoch']:03d}-top1-{ranked[0]['val_top1']:.3f}.pt"))[1].model_version
    assert json.loads(last(out)["state"])["kept"] == [[name, top1] for name, top1 in sorted(
        ((f"best-epoch{r['epoch']:03d}-top1-{r['val_top1']:.3f}.pt", r["val_top1"]) for r in ranked),
        key=lambda pair: -pair[1])]


def test_overwrite_first_removes_the_earlier_runs_files(sample_dir, tmp_path):
    """Else its best-epoch files stay forever, and its model.pt sits beside the new last.pt until the first epoch
    ends: a mixed folder whose stale model `label --checkpoint DIR` would take."""
    earlier = ["model.pt", "last.pt", "metrics.jsonl", "best-epoch007-top1-0.900.pt", "notes.txt"]
    for name in earlier:
        (tmp_path / name).write_bytes(b"earlier run")
    assert train(TrainConfig(data=sample_dir, output=str(tmp_path), overwrite=True, stop_after_steps=1,
                             **SMALL)) is None  # stopped before the first epoch ended
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "notes.txt"]  # what is not the trainer's stays
    assert json.loads(last(tmp_path)["state"])["step"] == 1


def test_rank_best_drops_the_worst_and_never_the_earlier_of_a_tie():
    kept = [["e1", 0.5], ["e2", 0.4]]
    assert rank_best(kept, ["e3", 0.3], 2) == (kept, [])  # not good enough: never written
    assert rank_best(kept, ["e3", 0.5], 2) == ([["e1", 0.5], ["e3", 0.5]], ["e2"])
    assert rank_best(kept, ["e3", 0.9], 2) == ([["e3", 0.9], ["e1", 0.5]], ["e2"])
    assert rank_best(kept, ["e3", 0.9], 0) == ([], ["e1", "e2"])
