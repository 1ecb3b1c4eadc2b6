"""`alexlabel export`: labeled images back into training data, closing train -> label -> review -> retrain.

Three forms the trainer reads: an ImageFolder tree DIR/<label>/<file> and WebDataset shards (schemas.shards),
each `alexlabel train --data` as the train/ or val/ split, and a uri,label manifest in CSV or Parquet
(`--data-manifest`). Rows follow the query rule: the latest row per uri of one model version. A person's
verdict (the `reviewed` view) wins over the model's: their label where they corrected it, the row dropped
where they marked it unusable. Checked rows pass whatever the filters; --decision and --min-confidence choose
among the model's unchecked ones.
"""
import csv
import hashlib
import io
import posixpath
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import UserError
from common.storage import atomic_write_bytes, check_output_file, read_bytes
from schemas.views import training_rows

MANIFEST_COLUMNS = ("uri", "label", "confidence", "decision", "model_version", "reviewed")  # views.training_rows


class ExportError(UserError):
    """An export that would be ambiguous, empty or cannot be written."""


def export(output: str, kind: str, dest: str, model: str | None = None, decision: str | None = None,
           min_confidence: float | None = None, reviewed_only: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Export to an ImageFolder tree ("imagefolder") or a manifest file ("manifest"); returns (written, failures).

    A destination of the wrong kind is refused first: otherwise it fails only after every row is read or copied."""
    if kind == "manifest":
        if not dest.lower().endswith((".csv", ".parquet")):
            raise ExportError(f"manifest {dest} must end in .csv or .parquet")
        check_output_file(dest, "--to manifest")
    else:
        fs, path = fsspec.core.url_to_fs(dest)
        if fs.isfile(path):
            raise ExportError(f"--to imagefolder {dest} is a file; give the folder to copy the images into")
    rows = select_rows(output, model, decision, min_confidence, reviewed_only)
    if kind == "imagefolder":
        return to_imagefolder(rows, dest)
    to_manifest(rows, dest)
    return len(rows), []


def select_rows(output: str, model: str | None = None, decision: str | None = None,
                min_confidence: float | None = None, reviewed_only: bool = False) -> list[tuple]:
    """MANIFEST_COLUMNS of the rows to export, ordered by uri."""
    rows = training_rows(output, model, decision, min_confidence, reviewed_only)
    if not rows:
        raise nothing_to_export(output, decision, min_confidence, reviewed_only)
    return rows


def nothing_to_export(output: str, decision: str | None, min_confidence: float | None,
                      reviewed_only: bool = False) -> ExportError:
    filters = (f"{f' --decision {decision}' if decision else ''}"
               f"{f' --min-confidence {min_confidence:g}' if min_confidence is not None else ''}"
               f"{' --reviewed-only' if reviewed_only else ''}")
    return ExportError(f"no labeled rows of {output}" + (f" pass the filters{filters}" if filters else ""))


def destinations(rows: list[tuple]) -> list[tuple[str, str]]:
    """(uri, "<label>/<file name>") pairs. A name two uris share under one label gets the first 8 hex digits of
    each uri's sha256 before its extension, so the result depends on the rows alone, never on their order."""
    keys = [(folder_name(label), posixpath.basename(uri)) for uri, label, *_ in rows]
    taken = Counter(keys)
    out = []
    for (uri, *_), (folder, name) in zip(rows, keys, strict=True):
        if taken[(folder, name)] > 1:
            stem, ext = posixpath.splitext(name)
            name = f"{stem}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}{ext}"
        out.append((uri, f"{folder}/{name}"))
    return out


def folder_name(label: str) -> str:
    """A label as one safe path segment: separators become _, and . or .. cannot climb out of DIR."""
    name = re.sub(r"[/\\\x00]", "_", label)
    return f"_{name}" if name in ("", ".", "..") else name


def to_imagefolder(rows: list[tuple], directory: str) -> tuple[int, list[tuple[str, str]]]:
    """Copy each image to DIR/<label>/ (any fsspec URLs, in parallel); returns (copied, [(uri, why)] not copied).

    Files already in DIR are overwritten when a row maps to them and left alone otherwise."""
    directory = directory.rstrip("/")

    def copy(pair: tuple[str, str]) -> str | None:
        uri, rel = pair
        try:
            atomic_write_bytes(f"{directory}/{rel}", read_bytes(uri))
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return None

    pairs = destinations(rows)
    with ThreadPoolExecutor(8) as pool:
        failures = [(uri, why) for (uri, _), why in zip(pairs, pool.map(copy, pairs), strict=True) if why]
    return len(pairs) - len(failures), failures


def shard_samples(rows: list[tuple]) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (the sorted unique labels, as a manifest's) and the (uri, label_index) samples write_shards takes."""
    classes = sorted({label for _, label, *_ in rows})
    index = {name: i for i, name in enumerate(classes)}
    return classes, [(uri, index[label]) for uri, label, *_ in rows]


def to_manifest(rows: list[tuple], path: str) -> None:
    """Write MANIFEST_COLUMNS (uri and label first) as CSV, or as Parquet when the name ends in .parquet."""
    if path.lower().endswith(".parquet"):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([dict(zip(MANIFEST_COLUMNS, row, strict=True)) for row in rows]), buf)
        atomic_write_bytes(path, buf.getvalue())
    else:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([MANIFEST_COLUMNS, *rows])
        atomic_write_bytes(path, text.getvalue().encode())
