"""A local run's progress: a bar on a terminal (a real pty), lines in a log, counted by the worker threads."""
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import termios
import time

import numpy as np
import pytest

from alexlabel.sample_data import CLASSES, sample_image
from beam_pipeline.progress import TALLY, Progress, line


def test_a_log_gets_a_line_every_so_often_with_the_rate_and_time_left():
    log = io.StringIO()
    with Progress(log, line_seconds=0.2):
        TALLY.add("matched", 10)
        TALLY.add("labeled", 3)
        TALLY.add("errored")
        time.sleep(1.2)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 6
    assert re.fullmatch(r"labeling: 4 of 10 matched done \(3 labeled, 1 errors, 0 skipped\), [\d.]+ images/s, "
                        r"\d\d:\d\d left", lines[-1])


def test_a_finished_run_has_no_time_left():
    assert line({"matched": 5, "labeled": 4, "errored": 0, "skipped": 1}, 2.0) == \
        "labeling: 5 of 5 matched done (4 labeled, 0 errors, 1 skipped), 2.0 images/s"


@pytest.mark.parametrize("slices", [[], ["--commit-every", "3"]])
def test_a_terminal_shows_the_bar_over_the_whole_job(checkpoint, tmp_path, slices):
    """One bar, whether the job runs in one piece or in slices of 3."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        sample_image(np.random.default_rng(i), CLASSES[i]).save(folder / f"img_{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size, as xterm's
    proc = subprocess.Popen([".venv/bin/alexlabel", "label", "--input", f"{folder}/*", "--checkpoint", checkpoint,
                             "--output", str(tmp_path / "out"), *slices], stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the pty closes when the process ends
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    final = seen.decode(errors="replace").replace("\r", "\n").splitlines()
    bars = [s for s in final if s.startswith("labeling:")]
    assert bars and "7/7" in bars[-1] and "img/s" in bars[-1] and "errors 1, skipped 0" in bars[-1]
    assert all("/7 " in bar for bar in bars if "|" in bar)  # every drawn bar counts the whole job
    assert "labeled 6, errors 1" in proc.stdout.read().decode()
