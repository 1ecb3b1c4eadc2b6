"""Ctrl-C during `alexlabel train`, as a terminal sends it: the run stops between two steps with last.pt saved
there, says where and how to go on in one line, exits 130, and --resume continues from that step."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from commands import invoke

# The real command, each training step slowed to at least 0.2 s, so that Ctrl-C lands mid-run on any machine.
SLOW_STEPS = ("import time, trainer.train as t; step = t.train_step; "
              "t.train_step = lambda *a: (time.sleep(0.2), step(*a))[1]; from alexlabel.cli import main; main()")
# 32 training images in batches of 8: 4 steps per epoch; one data loader worker, which Ctrl-C reaches too.
OPTIONS = ["--arch", "alexnet_small", "--width", "8", "--dropout", "0", "--image-size", "32", "--epochs", "3",
           "--batch-size", "8", "--workers", "1"]


def test_ctrl_c_saves_last_pt_where_it_stopped_and_resume_finishes_the_run(sample_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", sample_dir, "--output", str(out), *OPTIONS]
    run = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    for line in run.stdout:
        if line.startswith("epoch 1/3:"):
            break
    else:
        pytest.fail(run.communicate()[1])
    time.sleep(0.5)  # into epoch 2, which has at least 0.8 s of steps
    os.killpg(run.pid, signal.SIGINT)  # to the command and its worker, as Ctrl-C in a terminal
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    stopped = re.fullmatch(rf"interrupted: saved {out}/last\.pt at epoch 2, step (\d); continue with --resume",
                           lines[0])
    assert stopped, lines[0]
    step = int(stopped[1])
    state = json.loads(torch.load(out / "last.pt", weights_only=True)["state"])
    assert (state["epoch"], state["step"]) == (1, step) and step < 4

    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {out}/last.pt at epoch 2, step {step}" in resumed.output
    assert f"wrote {out}/model.pt" in resumed.output
    assert [json.loads(row)["epoch"] for row in open(out / "metrics.jsonl")] == [1, 2, 3]
