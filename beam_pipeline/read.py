"""Inputs -> unique image URIs: glob patterns (local, gs://, anything Beam's FileSystems reads) and
lists of URIs (a text file, one per line, or the `uri` column of a CSV or Parquet file, e.g. a labels table or
the manifest `alexlabel export` writes)."""
import csv
import io
from collections.abc import Iterator

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_pipeline.progress import TALLY
from common.errors import UserError, first_line
from common.redact import redact
from common.storage import IMAGE_EXTENSIONS, has_extension, resolve_uri

MATCHED = Metrics.counter("alexlabel", "matched")
SKIPPED = Metrics.counter("alexlabel", "skipped")


def count_matched(uri: str) -> str:
    MATCHED.inc()
    TALLY.add("matched")
    return uri


class MatchImages(beam.PTransform):
    """Patterns and URI lists -> each image URI exactly once, spread across workers.

    The extension filter applies to pattern matches only: a listed URI was asked for by name, so it is
    labeled or becomes an error row. Distinct drops URIs named twice and redistributes the work.
    """

    def __init__(self, patterns: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                 lists: list[str] = ()):
        super().__init__()
        self.patterns, self.lists = list(patterns), list(lists)
        self.extensions = tuple(e.lower().lstrip(".") for e in extensions)

    def expand(self, pbegin):
        matched = (pbegin
                   | "Patterns" >> beam.Create(self.patterns)
                   | "Match" >> fileio.MatchAll(EmptyMatchTreatment.ALLOW)
                   | "Paths" >> beam.Map(lambda metadata: metadata.path)
                   | "ImagesOnly" >> beam.Filter(has_extension, self.extensions))
        listed = [pbegin | f"List{i}" >> read_uri_list(url) for i, url in enumerate(self.lists)]
        return ((matched, *listed)
                | "AllInputs" >> beam.Flatten()
                | "Unique" >> beam.Distinct()
                | "CountMatched" >> beam.Map(count_matched))


def read_uri_list(url: str) -> beam.PTransform:
    """A list's URIs, read by one worker as a stream (Unique then spreads them); see listed_uris."""
    return beam.Create([url]) | beam.FlatMap(listed_uris)


def listed_uris(url: str) -> Iterator[str]:
    """The URIs a list names, each spelled by the tables' one rule (relative ones taken from the list's folder):
    a .csv or .parquet file's `uri` column, else a text file's lines less blank ones and `#` comments.

    CSV is parsed as a whole file, not line by line, so quoted fields may hold commas and line breaks."""
    with FileSystems.open(url) as f:
        if list_kind(url) == "parquet":
            names = (uri for batch in pq.ParquetFile(f).iter_batches(columns=["uri"]) for uri in batch[0].to_pylist())
        elif list_kind(url) == "csv":
            names = (row["uri"] for row in csv.DictReader(_text(f)))
        else:
            names = (line for line in _text(f) if not line.lstrip().startswith("#"))
        for name in names:
            if name and name.strip():
                yield resolve_uri(name.strip(), url)


def check_uri_list(url: str) -> None:
    """Refuse, before any work, a list that does not exist, or a CSV or Parquet one without a uri column."""
    if not FileSystems.exists(url):
        raise UserError(f"--input-list {url} does not exist; pass a text file of URIs, or a CSV or Parquet file "
                        "with a uri column")
    if list_kind(url) != "text":
        with FileSystems.open(url) as f:
            columns = pq.read_schema(f).names if list_kind(url) == "parquet" else next(csv.reader(_text(f)), [])
        if "uri" not in columns:
            raise UserError(f"--input-list {url} has no uri column (its columns: {', '.join(columns) or 'none'}); "
                            "give the column of URIs the name uri, or list one URI a line in a .txt file")


def list_kind(url: str) -> str:
    """csv or parquet by the name's extension, else text."""
    extension = url.lower().rpartition(".")[2]
    return extension if extension in ("csv", "parquet") else "text"


def _text(f) -> io.TextIOWrapper:
    return io.TextIOWrapper(f, encoding="utf-8-sig", newline="")  # -sig: drops the BOM spreadsheets write


class SkipDone(beam.PTransform):
    """Drop URIs that are done (resume) and count them as skipped: those with a row in every one of the `needed`
    tables' files (labels, and embeddings or probabilities where the run writes them), or in an errors file.

    An anti-join by key, so the cost grows linearly with inputs and rows, on any runner.
    """

    def __init__(self, done_files: dict[str, list[str]]):
        super().__init__()
        self.done_files, self.needed = done_files, frozenset(done_files) - {"errors"}

    def expand(self, uris):
        done = (uris.pipeline
                | "DoneFiles" >> beam.Create([f for files in self.done_files.values() for f in files])
                | "ReadDone" >> beam.io.ReadAllFromParquet(columns=["uri"], with_filename=True)
                | "KeyDone" >> beam.Map(lambda found: (found[1]["uri"], table_of(found[0]))))
        # Rows store URIs redacted (a signed URL's token is a credential), so compare in that form.
        return ({"todo": uris | "KeyTodo" >> beam.Map(lambda uri: (redact(uri), uri)), "done": done}
                | "JoinDone" >> beam.CoGroupByKey()
                | "NotDone" >> beam.FlatMap(_not_done, self.needed))


def table_of(url: str) -> str:
    """The table a file of OUT/<table>/model=<version>/ belongs to."""
    return url.rsplit("/model=", 1)[0].rsplit("/", 1)[-1]


def _not_done(joined, needed: frozenset[str]):
    _, groups = joined
    todo = list(groups["todo"])
    if not todo:
        return
    tables = set(groups["done"])
    if "errors" in tables or needed <= tables:
        SKIPPED.inc(len(todo))
        TALLY.add("skipped", len(todo))
    else:
        yield from todo


def read_uri(uri: str) -> bytes:
    """A whole file. A local one (the tables spell those as plain paths) is read directly: Beam's FileSystems
    would look up its filesystem and compression for every image first."""
    if "://" not in uri:
        with open(uri, "rb") as f:
            return f.read()
    with FileSystems.open(uri) as f:
        return f.read()


def matched_uris(patterns: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> set[str]:
    """Match on the launcher: to fail before any job starts on an empty input, and for --watch."""
    uris = set()
    try:
        results = FileSystems.match(list(patterns))
    except BeamIOError as e:
        pattern, reason = next(iter(e.exception_details.items()), (" ".join(patterns), e))
        raise UserError(f"cannot list {pattern} ({redact(first_line(reason))}); check the path and that your "
                        "credentials may read it") from None
    for result in results:
        uris.update(m.path for m in result.metadata_list if has_extension(m.path, extensions))
    return uris


def count_matches(patterns: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> int:
    return len(matched_uris(patterns, extensions))
