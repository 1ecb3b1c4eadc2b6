"""Long local runs commit in slices (--commit-every): exact accounting per slice and for the job, and a real SIGKILL
partway loses one slice at most, which --skip-existing then labels."""
import glob
import os
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq

from alexlabel.sample_data import CLASSES, sample_image
from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions


def images(folder, n: int, broken: int = 0) -> str:
    folder.mkdir()
    for i in range(n):
        sample_image(np.random.default_rng(i), CLASSES[i % len(CLASSES)]).save(folder / f"img_{i:02d}.jpg")
    for i in range(broken):
        (folder / f"broken_{i}.jpg").write_bytes(b"not an image")
    return f"{folder}/*"


def table(out, name: str) -> list[dict]:
    files = glob.glob(f"{out}/{name}/*/*.parquet")
    return pq.read_table(files, partitioning=None).to_pylist() if files else []


def test_a_run_in_slices_accounts_for_each_slice_and_the_whole_job(checkpoint, tmp_path):
    out = tmp_path / "out"
    row = run(LabelOptions(inputs=[images(tmp_path / "images", 10, broken=1)], checkpoint=checkpoint,
                           output=str(out), commit_every=4, run_id="job"))
    assert (row["run_id"], row["matched"], row["labeled"], row["errored"], row["skipped"]) == ("job", 11, 10, 1, 0)
    runs = sorted(table(out, "runs"), key=lambda r: r["run_id"])
    assert [(r["run_id"], r["matched"]) for r in runs] == [("job-0001", 4), ("job-0002", 4), ("job-0003", 3)]
    assert all(r["matched"] == r["labeled"] + r["errored"] + r["skipped"] for r in runs)
    labels = table(out, "labels")
    assert len(labels) == len({r["uri"] for r in labels}) == 10
    assert {r["run_id"] for r in labels} == {"job-0001", "job-0002", "job-0003"}


def test_a_small_job_is_one_run_as_before(checkpoint, tmp_path):
    out = tmp_path / "out"
    row = run(LabelOptions(inputs=[images(tmp_path / "images", 3)], checkpoint=checkpoint, output=str(out),
                           commit_every=3, run_id="small"))
    assert row["run_id"] == "small" and [r["run_id"] for r in table(out, "runs")] == ["small"]


def test_sigkill_loses_at_most_the_slice_in_progress(checkpoint, tmp_path):
    pattern, out = images(tmp_path / "images", 12), tmp_path / "out"
    args = [".venv/bin/alexlabel", "label", "--input", pattern, "--checkpoint", checkpoint, "--output", str(out),
            "--commit-every", "3", "--skip-existing"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not glob.glob(f"{out}/runs/*/*.parquet") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the first slice committed, the second under way
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = table(out, "labels")
    assert 3 <= len(committed) < 12 and len(table(out, "runs")) == len(committed) // 3
    assert not glob.glob(f"{out}/labels/*/*.tmp*") and not glob.glob(f"{out}/labels/*/.*")  # nothing half-written

    again = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert f"matched 12, labeled {12 - len(committed)}, errors 0, skipped {len(committed)}" in again
    labels = table(out, "labels")
    assert len(labels) == len({r["uri"] for r in labels}) == 12
