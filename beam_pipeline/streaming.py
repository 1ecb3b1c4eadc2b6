"""The unbounded variant's own parts: where new objects come from, and windowed Parquet writes.

New objects arrive as GCS Pub/Sub notifications (`--notifications`) or from polling the input
patterns (`fileio.MatchContinuously`, deduplicated). Rows are written per fixed window, under the
same layout as batch runs, by Beam's `fileio.WriteToFiles` with a Parquet sink.
"""
import re
from functools import cache

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.deduplicate import Deduplicate
from apache_beam.utils.timestamp import Duration

from beam_pipeline.read import count_matched
from beam_pipeline.write import CODEC, ensure_folder
from common.storage import has_extension
from schemas.tables import TABLES

DEDUP_SECONDS = 24 * 3600  # Pub/Sub redelivers at least once; one day covers its retention defaults


@cache
def _pattern_regex(pattern: str) -> re.Pattern:
    """Glob -> regex by Beam's own rule (what the polling branch's match uses): `**` crosses folders."""
    return re.compile(FileSystem.translate_pattern(pattern))


def matches_any(uri: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(_pattern_regex(p).match(uri) for p in patterns)


def notification_uri(message) -> tuple[str, str] | None:
    """(uri, generation) of a GCS OBJECT_FINALIZE notification; None for deletes and metadata updates."""
    attrs = message.attributes or {}
    if attrs.get("eventType") != "OBJECT_FINALIZE":
        return None
    return f"gs://{attrs['bucketId']}/{attrs['objectId']}", attrs.get("objectGeneration", "")


class NewObjects(beam.PTransform):
    """Unbounded input: each new (or overwritten) image URI once, from notifications or polling."""

    def __init__(self, patterns: list[str], extensions: tuple[str, ...], notifications: str = "",
                 poll_seconds: float = 60.0):
        super().__init__()
        self.patterns, self.extensions = tuple(patterns), extensions
        self.notifications, self.poll_seconds = notifications, poll_seconds

    def expand(self, pbegin):
        if self.notifications:
            uris = (pbegin
                    | "ReadNotifications" >> beam.io.ReadFromPubSub(subscription=self.notifications,
                                                                   with_attributes=True)
                    | "ObjectFinalized" >> beam.FlatMap(lambda m: [u] if (u := notification_uri(m)) else [])
                    | "KeyByGeneration" >> beam.Map(lambda ug: (f"{ug[0]}#{ug[1]}", ug[0]))
                    | "DropRedeliveries" >> Deduplicate(processing_time_duration=Duration(seconds=DEDUP_SECONDS))
                    | "Uris" >> beam.Values()
                    | "InPatterns" >> beam.Filter(matches_any, self.patterns))
        else:
            polled = [pbegin | f"Poll{i}" >> fileio.MatchContinuously(p, interval=self.poll_seconds)
                      for i, p in enumerate(self.patterns)]
            uris = polled | "AllPolled" >> beam.Flatten() | "Paths" >> beam.Map(lambda m: m.path)
        return (uris
                | "ImagesOnly" >> beam.Filter(has_extension, self.extensions)
                | "CountMatched" >> beam.Map(count_matched))


class ParquetSink(fileio.FileSink):
    """fileio's sink interface over pyarrow: rows are buffered into row groups of `row_group_rows`."""

    def __init__(self, schema: pa.Schema, row_group_rows: int = 10_000):
        self.schema, self.row_group_rows = schema, row_group_rows

    def open(self, fh):
        self._writer, self._rows = pq.ParquetWriter(fh, self.schema, compression=CODEC), []

    def write(self, record):
        self._rows.append(record)
        if len(self._rows) >= self.row_group_rows:
            self._write_rows()

    def flush(self):
        self._write_rows()
        self._writer.close()

    def _write_rows(self):
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []


class WriteWindowedTable(beam.PTransform):
    """Windowed rows -> OUT/<table>/model=<model_version>/<run_id>-<window start>-<window end>-....parquet.

    The partition comes from each row, so rows labeled after a model swap land under the new version.
    """

    def __init__(self, output: str, table: str, run_id: str):
        super().__init__()
        self.directory, self.table, self.run_id = f"{output.rstrip('/')}/{table}", table, run_id

    def expand(self, rows):
        directory, run_id = self.directory, self.run_id

        def naming(window, pane, shard_index, total_shards, compression, destination):
            partition = f"model={destination}"
            ensure_folder(FileSystems.join(directory, partition))  # fileio creates only `directory` itself
            name = fileio.default_file_naming(run_id, ".parquet")(window, pane, shard_index, total_shards,
                                                                  compression, destination)
            return f"{partition}/{name}"

        return rows | fileio.WriteToFiles(directory, destination=lambda row: row["model_version"],
                                          file_naming=naming, sink=lambda _: ParquetSink(TABLES[self.table]))

