"""Ctrl-C during `alexlabel label`: the workers stop, what they finished is committed, and one line says how far
the run got (status 130); a second Ctrl-C exits at once; a --watch ends with a summary of its rounds (status 0).

Each of the first tests stops a real `alexlabel label` process with a real SIGINT while it is labeling. One input
is a named pipe: a worker reading it blocks until the test writes an image into it, so the signal surely lands
midway. The last ones test common.interrupt, which `train` shares.
"""
import errno
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions

ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")
COPIES = 1200  # the pipe is the last input its worker takes about once in COPIES / workers runs


def start_label(*args) -> subprocess.Popen:
    return subprocess.Popen([ALEXLABEL, "label", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def images_and_a_pipe(sample_dir: str, folder: Path, copies: int) -> tuple[Path, bytes]:
    """`copies` sample images and pipe.jpg, a named pipe; returns the pipe and the image to write into it."""
    folder.mkdir()
    sources = sorted(glob.glob(f"{sample_dir}/bucket/img_*.jpg"))
    for i in range(copies):
        shutil.copy(sources[i % len(sources)], folder / f"copy_{i:05d}.jpg")
    pipe = folder / "pipe.jpg"
    os.mkfifo(pipe)
    return pipe, Path(sources[0]).read_bytes()


def wait_for_a_reader(pipe: Path, proc: subprocess.Popen) -> int:
    """The pipe's writing end, opened once a worker opens it to read the image: the run is labeling now."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # refused (ENXIO) until a reader has it open
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        time.sleep(0.02)
    raise AssertionError("no worker opened the pipe")


def ctrl_c_then_unblock(proc: subprocess.Popen, writer: int, image: bytes) -> None:
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the launcher has taken the signal before the blocked worker goes on
    os.set_blocking(writer, True)
    os.write(writer, image)
    os.close(writer)


def test_ctrl_c_stops_the_workers_keeps_their_work_and_says_how_far_the_run_got(sample_dir, checkpoint, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    pipe, image = images_and_a_pipe(sample_dir, images, COPIES)
    proc = start_label("--input", f"{images}/*", "--checkpoint", checkpoint, "--output", out)
    ctrl_c_then_unblock(proc, wait_for_a_reader(pipe, proc), image)
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 130, output
    lines = output.strip().splitlines()
    pattern = (rf"stopped: (\d+) of {COPIES + 1} matched inputs are done under {re.escape(str(out))}; "
               "rerun with --skip-existing to continue")
    assert len(lines) == 1 and (match := re.fullmatch(pattern, lines[0])), output  # no Aborted!, no C++ abort
    done = int(match[1])
    assert 0 < done < COPIES + 1  # the pipe's image, and what the workers held; the rest was left
    assert not os.path.exists(out / ".beam-temp")
    rows = pq.read_table(glob.glob(f"{out}/labels/*/*.parquet"), partitioning=None).num_rows
    assert rows == done and not pq.read_table(glob.glob(f"{out}/errors/*/*.parquet"), partitioning=None).num_rows

    os.remove(pipe)
    pipe.write_bytes(image)
    row = run(LabelOptions(inputs=[f"{images}/*"], checkpoint=checkpoint, output=str(out), skip_existing=True))
    assert (row["matched"], row["labeled"], row["skipped"]) == (COPIES + 1, COPIES + 1 - done, done)
    uris = pq.read_table(glob.glob(f"{out}/labels/*/*.parquet"), partitioning=None).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == COPIES + 1


def test_a_second_ctrl_c_exits_at_once(sample_dir, checkpoint, tmp_path):
    images = tmp_path / "images"
    pipe, _ = images_and_a_pipe(sample_dir, images, 20)
    proc = start_label("--input", f"{images}/*", "--checkpoint", checkpoint, "--output", tmp_path / "out")
    writer = wait_for_a_reader(pipe, proc)  # never written: that worker stays blocked, the run cannot end itself
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    os.close(writer)
    assert proc.returncode == 130
    assert output.strip().splitlines() == ["stopped at once; rerun with --skip-existing to continue"]


def test_ctrl_c_ends_a_watch_with_a_summary_of_its_rounds(sample_dir, checkpoint, tmp_path):
    """The round in progress stops as a run does and says how far it got; the watch itself ends well (status 0)."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for name in ("img_00000.jpg", "img_00001.jpg", "img_00002.jpg"):
        shutil.copy(f"{sample_dir}/bucket/{name}", images / name)
    proc = start_label("--watch", "0.2", "--input", f"{images}/*", "--checkpoint", checkpoint, "--output", out)
    first = [proc.stdout.readline() for _ in range(2)]
    assert first[0].startswith("watching ") and first[1].startswith("run ") and "labeled 3," in first[1], first
    pipe = images / "pipe.jpg"
    os.mkfifo(pipe)
    ctrl_c_then_unblock(proc, wait_for_a_reader(pipe, proc), (images / "img_00000.jpg").read_bytes())
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 0, output
    lines = output.strip().splitlines()
    assert lines[0] == f"stopped: 4 of 4 matched inputs are done under {out}; rerun with --skip-existing to continue"
    assert re.fullmatch(r"watch stopped after \d+ round\(s\): 1 labeling run\(s\), labeled 3, errors 0", lines[1])
    assert len(lines) == 2 and not os.path.exists(out / ".beam-temp")


def ctrl_c_twice(exit_line: str) -> subprocess.CompletedProcess:
    """Two SIGINTs inside ctrl_c_sets(flag, exit_line), in a fresh process; it prints the flag after each."""
    code = ("import os, signal, threading\n"
            "from common.interrupt import ctrl_c_sets\n"
            "flag = threading.Event()\n"
            f"with ctrl_c_sets(flag, {exit_line!r}):\n"
            "    for _ in range(2):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        print(flag.is_set(), flush=True)\n"
            "print(flag.is_set(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_first_ctrl_c_sets_the_flag_and_with_a_line_the_second_exits_at_once():
    """label's second Ctrl-C ends the process at once; the trainer's (no line) only asks again, as --nproc's
    forwarded signal does on top of the terminal's."""
    at_once = ctrl_c_twice("stopped at once")
    assert (at_once.returncode, at_once.stdout, at_once.stderr) == (130, "True\n", "stopped at once\n")
    asked_twice = ctrl_c_twice("")
    assert (asked_twice.returncode, asked_twice.stdout) == (0, "True\nTrue\nFalse True\n"), asked_twice.stderr


def test_interrupted_ends_a_command_with_its_line_and_status_130(capsys):
    from common.interrupt import Interrupted, exits_130

    for say in (True, False):
        with pytest.raises(SystemExit) as ended, exits_130(say):
            raise Interrupted("stopped: 3 of 5 done")
        assert ended.value.code == 130 and capsys.readouterr().err == ("stopped: 3 of 5 done\n" if say else "")
