"""Matching: glob patterns (local, gs://, anything Beam's FileSystems reads) -> unique image URIs."""
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")
MATCHED = Metrics.counter("alexlabel", "matched")
SKIPPED = Metrics.counter("alexlabel", "skipped")


def has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    return path.rsplit("/", 1)[-1].rpartition(".")[2].lower() in extensions


def count_matched(uri: str) -> str:
    MATCHED.inc()
    return uri


class MatchImages(beam.PTransform):
    """Patterns -> each matching image URI exactly once, spread across workers.

    Distinct both drops files that two patterns match and redistributes the work after matching.
    """

    def __init__(self, patterns: list[str], extensions: tuple[str, ...] = DEFAULT_EXTENSIONS):
        super().__init__()
        self.patterns, self.extensions = list(patterns), tuple(e.lower().lstrip(".") for e in extensions)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self.patterns)
                | "Match" >> fileio.MatchAll(EmptyMatchTreatment.ALLOW)
                | "Paths" >> beam.Map(lambda metadata: metadata.path)
                | "ImagesOnly" >> beam.Filter(has_extension, self.extensions)
                | "Unique" >> beam.Distinct()
                | "CountMatched" >> beam.Map(count_matched))


class SkipDone(beam.PTransform):
    """Drop URIs that already have a row in the given labels/errors files (resume); count them as skipped.

    An anti-join by key, so the cost grows linearly with inputs and rows, on any runner.
    """

    def __init__(self, done_files: list[str]):
        super().__init__()
        self.done_files = done_files

    def expand(self, uris):
        done = (uris.pipeline
                | "DoneFiles" >> beam.Create(self.done_files)
                | "ReadDone" >> beam.io.ReadAllFromParquet(columns=["uri"])
                | "KeyDone" >> beam.Map(lambda row: (row["uri"], None)))
        return ({"todo": uris | "KeyTodo" >> beam.Map(lambda uri: (uri, None)), "done": done}
                | "JoinDone" >> beam.CoGroupByKey()
                | "NotDone" >> beam.FlatMap(_not_done))


def _not_done(joined):
    uri, groups = joined
    if not list(groups["todo"]):
        return
    if list(groups["done"]):
        SKIPPED.inc()
    else:
        yield uri


def read_uri(uri: str) -> bytes:
    with FileSystems.open(uri) as f:
        return f.read()


def count_matches(patterns: list[str], extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> int:
    """Match on the launcher, so an empty or unreadable input fails before any job starts."""
    uris = set()
    for result in FileSystems.match(list(patterns)):
        uris.update(m.path for m in result.metadata_list if has_extension(m.path, extensions))
    return len(uris)
