"""Rows -> Parquet tables under the output URL, laid out for DuckDB, pyarrow and BigQuery:

    OUT/labels/model=<model_version>/<run_id>-00000-of-00002.parquet   (Beam's sink: temp files, then rename)
    OUT/errors/model=<model_version>/<run_id>-....parquet
    OUT/runs/model=<model_version>/<run_id>.parquet                    (one row, written by the launcher)

The Hive partition key is `model`, not `model_version`: a key that repeats a column stored in the files
makes pyarrow and BigQuery refuse to merge the two.
"""
import contextlib
import functools
import inspect
import io
import os
import time
import uuid
from datetime import datetime

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from common.errors import UserError, first_line
from common.redact import redact
from common.storage import atomic_write_bytes, glob_urls, is_local
from schemas.tables import TABLES

TEMP_FOLDER = ".beam-temp"  # hidden: pyarrow and most readers skip names starting with "."
CODEC = "zstd"  # what every table is compressed with (BENCHMARKS.md: size and speed beside uncompressed)
LEFTOVER_SECONDS = 24 * 3600  # a temp folder unchanged this long belongs to a run that died (see tidy_temp)


def table_prefix(output: str, table: str, model_version: str) -> str:
    return f"{output.rstrip('/')}/{table}/model={model_version}"


class WriteTable(beam.PTransform):
    """Beam's Parquet sink with the table's schema from schemas/; files appear only when complete.

    Beam writes shards into a temp folder and renames them into place when the run finishes. That temp
    folder goes under OUT/.beam-temp/ instead of inside the table, so a killed run leaves no partial
    file where DuckDB, pyarrow datasets or BigQuery external tables look.
    """

    def __init__(self, output: str, table: str, model_version: str, run_id: str):
        super().__init__()
        self.prefix = f"{table_prefix(output, table, model_version)}/{run_id}"
        self.temp_root = f"{output.rstrip('/')}/{TEMP_FOLDER}"
        self.schema = TABLES[table]

    def expand(self, rows):
        # Small record batches start the temp file early; row groups still fill to Beam's 64 MB buffer.
        write = beam.io.WriteToParquet(self.prefix, self.schema, codec=CODEC, file_name_suffix=".parquet",
                                       record_batch_size=256)
        return rows | temp_folder_outside_tables(write, self.temp_root)


def temp_folder_outside_tables(write: beam.io.WriteToParquet, temp_root: str) -> beam.io.WriteToParquet:
    """Beam's file sinks put their temp folder beside the final files, and no option moves it: this swaps
    the sink's private `_create_temp_dir(file_path_prefix)` for one under `temp_root`. A Beam upgrade that
    changes that method fails here, loudly, instead of leaving temp files inside the tables."""
    sink = write._sink
    create = getattr(type(sink), "_create_temp_dir", None)
    if create is None or list(inspect.signature(create).parameters) != ["self", "file_path_prefix"]:
        raise RuntimeError("apache_beam's FileBasedSink._create_temp_dir(file_path_prefix) changed; "
                           "beam_pipeline/write.py must learn the new way to place temp files")
    sink._create_temp_dir = functools.partial(_temp_dir_outside_tables, temp_root)
    return write


def check_writable(output: str) -> None:
    """Write and delete a probe object, so an unwritable output fails before any work, not at the end."""
    probe = f"{output.rstrip('/')}/.alexlabel-write-probe-{uuid.uuid4().hex}"
    try:
        atomic_write_bytes(probe, b"ok")  # the same write (folders, temp object, rename) the run will do
        fs, path = fsspec.core.url_to_fs(probe)
        fs.rm(path)
    except Exception as e:  # any storage error means the same thing to the user
        raise UserError(f"cannot write to --output {output} ({redact(first_line(e))}); check the path and "
                        "permissions, or choose another output") from None


def ensure_folder(path: str) -> None:
    """Local folders must exist before a rename into them; object stores have no folders (a no-op)."""
    try:
        FileSystems.mkdirs(path)
    except OSError:
        pass  # already there (LocalFileSystem refuses to create an existing folder)


def make_table_folders(output: str, model_version: str, also: list[str] = ()) -> None:
    for table in ("labels", "errors", *also):
        ensure_folder(table_prefix(output, table, model_version))


def _temp_dir_outside_tables(temp_root: str, file_path_prefix: str) -> str:
    return FileSystems.join(temp_root, f"{FileSystems.split(file_path_prefix)[1]}-{uuid.uuid4().hex}")


def tidy_temp(output: str) -> None:
    """Remove what dead runs (SIGKILL, a second Ctrl-C, a crash) left under OUT/.beam-temp/, and that folder
    itself once empty (locally; object stores have no folders). A run that ends, Ctrl-C included, removes its own.

    A run's temp folder goes once nothing in it changed for LEFTOVER_SECONDS (a day), not sooner: a live run
    into the same output may leave its folder untouched for as long as it runs (Beam writes a shard only once
    64 MB of rows are buffered, and an errors shard may get none), and removing it would fail that run at its end.
    """
    fs, root = fsspec.core.url_to_fs(f"{output.rstrip('/')}/{TEMP_FOLDER}")
    changed: dict[str, float] = {}  # run folder -> when anything in it last changed
    for path, info in fs.find(root, withdirs=True, detail=True).items():
        folder, mtime = path[len(root):].strip("/").split("/")[0], info.get("mtime")  # none: GCS's implied folders
        if folder and mtime is not None:
            at = mtime.timestamp() if isinstance(mtime, datetime) else mtime  # a datetime on GCS, seconds locally
            changed[folder] = max(changed.get(folder, 0.0), at)
    for folder, at in changed.items():
        if at < time.time() - LEFTOVER_SECONDS:
            fs.rm(f"{root}/{folder}", recursive=True)
    if is_local(fs):
        with contextlib.suppress(OSError):  # not empty: a live run's, or a young leftover
            os.rmdir(root)


def run_files(output: str, table: str, model_version: str, run_id: str) -> list[str]:
    """The finished files of one run (or of all runs, with run_id="*") of a table."""
    return glob_urls(f"{table_prefix(output, table, model_version)}/{run_id}-*.parquet")


def count_rows(files: list[str]) -> int:
    total = 0
    for url in files:
        with fsspec.open(url, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def write_run_row(output: str, row: dict) -> str:
    url = f"{table_prefix(output, 'runs', row['model_version'])}/{row['run_id']}.parquet"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=TABLES["runs"]), buf, compression=CODEC)
    atomic_write_bytes(url, buf.getvalue())
    return url
