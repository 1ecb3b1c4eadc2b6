"""A full disk under --output: one `Error: ...` line naming the output and the fix, and no partial table file.

The real case runs the CLI in a private mount namespace whose --output is a tiny tmpfs: the checkpoint
(outside it) loads and the write probe fits, but the tables do not.
"""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from commands import invoke, one_line_error

from beam_pipeline import failures, launch

REPO = Path(__file__).resolve().parents[1]
COPIES = 40  # 40 x the 16-file bucket: ~20 KB of labels shards, several times what the tmpfs has left
TMPFS_SIZE = "16k"  # four pages: the write probe's one fits, the tables' shards do not


def table_files(out: Path) -> list[Path]:
    """Every file under OUT/labels and OUT/errors that readers would see (hidden names excluded)."""
    return sorted(p for table in ("labels", "errors") for p in (out / table).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts))


def test_full_disk_is_one_line_and_leaves_no_partial_table_file(checkpoint, sample_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(COPIES):
        for f in Path(sample_dir, "bucket").iterdir():
            shutil.copyfile(f, images / f"c{i:02d}_{f.name}")
    mount, snapshot = tmp_path / "mnt", tmp_path / "snapshot"
    mount.mkdir()
    snapshot.mkdir()
    out = mount / "out"
    cli = [sys.executable, "-c", "from alexlabel.cli import main; main()", "label", "--input", f"{images}/*",
           "--checkpoint", checkpoint, "--output", str(out)]
    # The tmpfs vanishes with the namespace, so its contents are copied out before the shell exits.
    script = (f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$1" && shift && {{ "$@"; rc=$?; '
              f'cp -a "{out}/." "{snapshot}/"; exit $rc; }}')
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    done = subprocess.run([*namespace, "sh", "-c", script, "sh", str(mount), *cli], cwd=REPO, timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    assert done.returncode == 1, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "No space left on device" in last and f"--output {out} " in last, last
    assert "free space there or choose another --output" in last
    assert "Traceback" not in done.stdout, done.stdout
    assert (snapshot / "labels").is_dir() and (snapshot / ".beam-temp").is_dir()  # it got as far as writing
    assert not any((snapshot / ".beam-temp").iterdir())  # the run's partial temp files are gone
    for f in table_files(snapshot):
        pq.read_table(f)  # each file a reader sees is complete


def test_full_disk_writing_the_runs_row_is_the_same_one_line(checkpoint, sample_dir, tmp_path, monkeypatch):
    def full(output, row):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(launch, "write_run_row", full)
    out = tmp_path / "out"
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint,
                                 "--output", out))
    assert f"--output {out} ran out of space" in line and "choose another --output" in line
    for f in table_files(out):
        pq.read_table(f)


def test_other_failures_are_not_called_a_full_disk(checkpoint, sample_dir, tmp_path, monkeypatch):
    def broken(output, row):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(launch, "write_run_row", broken)
    result = invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint,
                    "--output", tmp_path / "out")
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EIO


def test_disk_full_is_recognised_in_the_chain_or_in_beams_text_only():
    def chained(inner):
        try:
            raise inner
        except Exception as e:
            try:
                raise RuntimeError("bundle failed") from e
            except RuntimeError as outer:
                return outer

    assert failures.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert failures.is_disk_full(chained(OSError(errno.ENOSPC, "No space left on device")))
    assert failures.is_disk_full(RuntimeError("OSError: [Errno 28] No space left on device [while running 'W']"))
    assert not failures.is_disk_full(RuntimeError("OSError: [Errno 5] Input/output error [while running 'W']"))
    assert not failures.is_disk_full(chained(PermissionError(errno.EACCES, "Permission denied")))
    assert not failures.is_disk_full(ValueError("No space left on device"))  # only Beam's RuntimeError is read as text
