"""Rows -> Parquet tables under the output URL, laid out for DuckDB, pyarrow and BigQuery:

    OUT/labels/model=<model_version>/<run_id>-00000-of-00002.parquet   (Beam's sink: temp files, then rename)
    OUT/errors/model=<model_version>/<run_id>-....parquet
    OUT/runs/model=<model_version>/<run_id>.parquet                    (one row, written by the launcher)

The Hive partition key is `model`, not `model_version`: a key that repeats a column stored in the files
makes pyarrow and BigQuery refuse to merge the two.
"""
import functools
import io
import uuid
from datetime import UTC, datetime

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from schemas.errors import UserError, first_line
from schemas.redact import redact
from schemas.storage import atomic_write_bytes, glob_urls
from schemas.tables import TABLES

TEMP_FOLDER = ".beam-temp"  # hidden: pyarrow and most readers skip names starting with "."
LABELED = Metrics.counter("alexlabel", "labeled")
ERRORED = Metrics.counter("alexlabel", "errored")


def table_prefix(output: str, table: str, model_version: str) -> str:
    return f"{output.rstrip('/')}/{table}/model={model_version}"


def label_row(result: PredictionResult, run_id: str, accept_threshold: float) -> dict:
    LABELED.inc()
    p = result.inference
    confidence = p["confidences"][0]
    margin = confidence - p["confidences"][1] if len(p["confidences"]) > 1 else confidence
    return {**result.example, "label": p["labels"][0], "label_index": p["indices"][0], "confidence": confidence,
            "topk_labels": p["labels"], "topk_indices": p["indices"], "topk_confidences": p["confidences"],
            "margin": margin, "decision": "accept" if confidence >= accept_threshold else "review",
            "model_version": result.model_id, "run_id": run_id, "labeled_at": datetime.now(UTC)}


def error_row(record: dict, model_version: str, run_id: str) -> dict:
    ERRORED.inc()
    return {**record, "model_version": model_version, "run_id": run_id, "at": datetime.now(UTC)}


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
        write = beam.io.WriteToParquet(self.prefix, self.schema, file_name_suffix=".parquet", record_batch_size=256)
        write._sink._create_temp_dir = functools.partial(_temp_dir_outside_tables, self.temp_root)
        return rows | write


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


def make_table_folders(output: str, model_version: str) -> None:
    for table in ("labels", "errors"):
        ensure_folder(table_prefix(output, table, model_version))


def _temp_dir_outside_tables(temp_root: str, file_path_prefix: str) -> str:
    return FileSystems.join(temp_root, f"{FileSystems.split(file_path_prefix)[1]}-{uuid.uuid4().hex}")


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
    pq.write_table(pa.Table.from_pylist([row], schema=TABLES["runs"]), buf)
    atomic_write_bytes(url, buf.getvalue())
    return url
