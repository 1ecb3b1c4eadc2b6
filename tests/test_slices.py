"""Long local runs commit in slices (--commit-every): exact accounting per slice and for the job, each in its runs row
and shown once by query and report, and a real SIGKILL partway loses one slice at most, which --skip-existing then
labels."""
import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from commands import invoke

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


@pytest.fixture(scope="module")
def sliced(checkpoint, tmp_path_factory):
    """A job of 11 inputs (one broken) in slices of 4: its output folder and the row `run` returned."""
    root = tmp_path_factory.mktemp("sliced")
    row = run(LabelOptions(inputs=[images(root / "images", 10, broken=1)], checkpoint=checkpoint,
                           output=str(root / "out"), commit_every=4, run_id="job"))
    return root / "out", row


def test_a_run_in_slices_accounts_for_each_slice_and_the_whole_job(sliced):
    out, row = sliced
    assert (row["run_id"], row["matched"], row["labeled"], row["errored"], row["skipped"]) == ("job", 11, 10, 1, 0)
    job, *slices = sorted(table(out, "runs"), key=lambda r: r["run_id"])
    assert job == row and job["job_id"] is None  # the job's own row, written as returned
    assert [(r["run_id"], r["matched"], r["job_id"]) for r in slices] == [
        ("job-0001", 4, "job"), ("job-0002", 4, "job"), ("job-0003", 3, "job")]
    assert all(r["matched"] == r["labeled"] + r["errored"] + r["skipped"] for r in [job, *slices])
    assert all(job[key] == sum(r[key] for r in slices) for key in ("matched", "labeled", "errored", "skipped"))
    assert job["started_at"] <= slices[0]["started_at"] and job["finished_at"] >= slices[-1]["finished_at"]
    assert job["wall_seconds"] >= sum(r["wall_seconds"] for r in slices)
    assert job["images_per_second"] == pytest.approx(11 / job["wall_seconds"])
    labels = table(out, "labels")
    assert len(labels) == len({r["uri"] for r in labels}) == 10
    assert {r["run_id"] for r in labels} == {"job-0001", "job-0002", "job-0003"}


def test_query_and_report_show_a_sliced_job_once(sliced, tmp_path):
    out, _ = sliced
    (shown,) = summary_runs(out)
    assert shown == {"run_id": "job", "model_version": shown["model_version"], "slices": 3, "matched": 11,
                     "labeled": 10, "errored": 1, "skipped": 0, "seconds": shown["seconds"],
                     "images_per_s": shown["images_per_s"], "unfinished_job": None}
    assert invoke("report", out, "--html", tmp_path / "r.html", "--review", 0).exit_code == 0
    runs_section = (tmp_path / "r.html").read_text().split("<h2>Runs</h2>")[1]
    assert ">job<" in runs_section and "job-000" not in runs_section and ">11<" in runs_section
    compared = invoke("query", out, "--compare", "job", shown["model_version"], "--format", "json")
    assert compared.exit_code == 0, compared.output  # the job's id stands for its slices' labels
    (agreement,) = json.loads(compared.output)["agreement"]
    assert (agreement["compared"], agreement["agreed"]) == (10, 10)


def test_a_small_job_is_one_run_as_before(checkpoint, tmp_path):
    out = tmp_path / "out"
    row = run(LabelOptions(inputs=[images(tmp_path / "images", 3)], checkpoint=checkpoint, output=str(out),
                           commit_every=3, run_id="small"))
    assert row["run_id"] == "small" and [(r["run_id"], r["job_id"]) for r in table(out, "runs")] == [("small", None)]


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
    *killed, rerun = summary_runs(out)  # the killed job wrote no row of its own: its slices stand for it
    (killed_job,) = {r["unfinished_job"] for r in killed}
    assert len(killed) == len(committed) // 3 and all(r["run_id"].startswith(f"{killed_job}-") for r in killed)
    assert (rerun["slices"], rerun["matched"], rerun["skipped"]) == (4, 12, len(committed))
    assert rerun["unfinished_job"] is None


def summary_runs(out) -> list[dict]:
    result = invoke("query", out, "--summary", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["runs"]
