"""Learning-rate schedules, stepped directly: warmup, cosine, step and plateau."""
import math

import pytest
import torch

from trainer.config import TrainConfig
from trainer.train import make_schedulers


def curve(steps: int, steps_per_epoch: int, **options) -> tuple[list[float], object, torch.optim.Optimizer]:
    """The LR of each of `steps` optimizer steps (per-step scheduler only), with the plateau scheduler."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, plateau = make_schedulers(TrainConfig(output="unused", lr=1.0, **options), optimizer, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, plateau, optimizer


def test_cosine_warms_up_linearly_then_falls_to_zero():
    lrs, plateau, _ = curve(40, 10, schedule="cosine", epochs=4, warmup_epochs=1)
    assert plateau is None
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10:] == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 30)) for i in range(30)])
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 0.01


def test_step_multiplies_by_gamma_every_lr_step_epochs():
    lrs, _, _ = curve(30, 5, schedule="step", epochs=6, lr_step_epochs=2, lr_gamma=0.1)
    assert lrs == pytest.approx([1.0] * 10 + [0.1] * 10 + [0.01] * 10)


def test_step_with_warmup():
    lrs, _, _ = curve(12, 4, schedule="step", epochs=3, warmup_epochs=1, lr_step_epochs=2, lr_gamma=0.5)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])


def test_plateau_decays_after_patience_epochs_without_val_loss_improvement():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, plateau = make_schedulers(TrainConfig(output="unused", lr=1.0, schedule="plateau", warmup_epochs=1,
                                                     plateau_patience=1, lr_gamma=0.5), optimizer, 4)
    lrs = []
    for val_loss in (2.0, 1.0, 1.5, 1.2, 0.9, 1.0, 1.0):  # one epoch each: 4 steps, then validation
        for _ in range(4):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        plateau.step(val_loss)
    # warmup in epoch 1; two epochs without a better loss (1.5, 1.2) halve it; 0.9 improves; 1.0, 1.0 halve again
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0] + [1.0] * 12 + [0.5] * 12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_plateau_on_top1_waits_for_accuracy_to_stall():
    _, plateau, optimizer = curve(1, 1, schedule="plateau", plateau_metric="val_top1", plateau_patience=0)
    for top1 in (0.2, 0.4, 0.6):  # higher is better: no decay
        plateau.step(top1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    plateau.step(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_a_plateau_decay_during_warmup_composes_with_it():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, plateau = make_schedulers(TrainConfig(output="unused", lr=1.0, schedule="plateau", warmup_epochs=2,
                                                     plateau_patience=0), optimizer, 4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    plateau.step(1.0)
    plateau.step(2.0)  # worse: x 0.1 at warmup step 2 of 8
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 3 / 8)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # warmup ends at lr x gamma, not at lr


def test_scheduler_state_round_trips_through_state_dict():
    lrs, _, _ = curve(25, 5, schedule="cosine", epochs=5, warmup_epochs=1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first, _ = make_schedulers(TrainConfig(output="unused", lr=1.0, epochs=5, warmup_epochs=1), optimizer, 5)
    for _ in range(12):
        optimizer.step()
        first.step()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    second, _ = make_schedulers(TrainConfig(output="unused", lr=1.0, epochs=5, warmup_epochs=1), fresh_optimizer, 5)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    rest = []
    for _ in range(13):
        rest.append(fresh_optimizer.param_groups[0]["lr"])
        fresh_optimizer.step()
        second.step()
    assert rest == pytest.approx(lrs[12:])
