"""The shard contract: WebDataset tar shards of training images, and the index that makes a folder of them one set.

A shard set is a folder (local or gs://) of `shard-NNNNNN.tar` files and an `index.json`. Each sample in a shard is
two tar members with one key: `<key>.<ext>`, the image's bytes exactly as stored (ext its lower-case extension,
jpeg spelled jpg), and `<key>.json`, `{"label", "label_index", "uri"}`. So `webdataset.WebDataset(urls)
.decode("pil").to_tuple("jpg", "json")` reads our shards, and our reader reads theirs that follow this layout.

The index lists the classes (label_index = position) and each shard's name and sample count. It is written last,
after every shard: a folder without one is an unfinished write, never half a set. Each shard and the index are
written whole (common.storage's atomic write), so a crash leaves no partial file under a final name.

Samples are shuffled once, with a seed, before they are split into shards: a shard holds a mix of classes, so
shuffling shard order and a buffer within a worker is enough for training (trainer/shards.py).
"""
import fnmatch
import io
import json
import posixpath
import random
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec
from braceexpand import braceexpand
from tqdm import tqdm
from webdataset.tariterators import tar_file_iterator
from webdataset.writer import TarWriter

from common.errors import UserError, first_line
from common.storage import as_url, atomic_write_bytes, canonical_uri, read_bytes

FORMAT = "alexlabel-shards"
FORMAT_VERSION = 1
INDEX = "index.json"
SHARD_BYTES = 256 * 2**20  # a shard's target size: large reads, yet many shards per DataLoader worker at scale
READ_AHEAD = 64             # images read in parallel while a shard is written (object stores: latency-bound)
READ_BLOCK = 16 * 2**20     # bytes per request when a shard is read: gcsfs's default cache would ask once per
                            # 10 KB tar record, a round trip each (benchmarks/bench_loader.py)


class ShardError(UserError):
    """A shard set that cannot be read as one; the message names the file and the fix."""


@dataclass(frozen=True)
class Shard:
    url: str
    count: int      # samples, from the index: what a reader that gets fewer counts as unreadable
    size: int = 0   # bytes


@dataclass(frozen=True)
class ShardSet:
    classes: list[str]
    shards: list[Shard]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    label_index: int
    uri: str


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def is_shard_set(url: str) -> bool:
    """Whether `url` names shards: a folder with an index, or a pattern or file of .tar shards."""
    if _is_pattern(url.rstrip("/")):
        return True
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path.rstrip('/')}/{INDEX}")


def open_shard_set(spec: str) -> ShardSet:
    """The shards a folder's index lists, or those a pattern (glob, or one .tar) matches, in index order.

    A pattern (fnmatch, or webdataset's braces: shard-{000000..000009}.tar) names files of one folder, whose
    index gives their counts and classes.
    """
    spec = spec.rstrip("/")
    if not _is_pattern(spec):
        return _read_index(spec)
    folder, pattern = posixpath.split(spec)
    if any(c in folder for c in "*?[{"):
        raise ShardError(f"shard pattern {spec}: only the file name may hold wildcards; give one folder")
    found = _read_index(folder)
    names = set(braceexpand(pattern))
    shards = [s for s in found.shards if any(fnmatch.fnmatchcase(posixpath.basename(s.url), n) for n in names)]
    if not shards:
        raise ShardError(f"shard pattern {spec} matches none of the {len(found.shards)} shards in {folder}/{INDEX}; "
                         "check the pattern (e.g. shard-*.tar)")
    return ShardSet(found.classes, shards)


def _is_pattern(spec: str) -> bool:
    """A shard file or a pattern of them, as opposed to a set's folder."""
    return spec.endswith(".tar") or any(c in spec for c in "*?[{")


def _read_index(folder: str) -> ShardSet:
    fs, path = fsspec.core.url_to_fs(folder)
    index_path = f"{path.rstrip('/')}/{INDEX}"
    if not fs.exists(index_path):
        what = "has shards but no" if fs.isdir(path) and fs.glob(f"{path}/*.tar") else "has no"
        raise ShardError(f"shard folder {folder} {what} {INDEX} (an unfinished or foreign write); write it again "
                         "with `alexlabel shards` or `alexlabel export --to shards`")
    try:
        index = json.loads(fs.cat_file(index_path))
        if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {index.get('format')!r} version {index.get('format_version')!r}")
        shards = [Shard(as_url(fs, f"{path.rstrip('/')}/{s['name']}"), int(s["count"]), int(s.get("bytes", 0)))
                  for s in index["shards"]]
        return ShardSet([str(c) for c in index["classes"]], shards)
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{folder}/{INDEX} is not an index of {FORMAT} version {FORMAT_VERSION} ({e}); "
                         "write the shards again") from None


def read_shard(url: str) -> Iterator[Sample]:
    """The whole samples of one shard, in order. A shard missing or cut short ends the stream, and a member that is
    not one of ours is skipped: the caller counts what the index promised and did not come as unreadable."""
    pending: dict[str, bytes] = {}
    try:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead") as stream:
            for member in tar_file_iterator(stream):
                key, _, ext = posixpath.basename(member["fname"]).partition(".")
                if pending.get("__key__") != key:
                    pending = {"__key__": key}  # the previous key's sample was whole, or not one of ours
                pending[ext] = member["data"]
                if len(pending) == 3 and (sample := _sample(pending)):  # its image and json, in either order
                    yield sample
    except (tarfile.TarError, OSError, EOFError):
        return  # missing, truncated or corrupt from here on


def _sample(members: dict) -> Sample | None:
    try:
        meta = json.loads(members["json"])
        image = next(v for k, v in members.items() if k not in ("__key__", "json"))
        return Sample(members["__key__"], image, int(meta["label_index"]), str(meta.get("uri", "")))
    except (ValueError, KeyError, TypeError, StopIteration):
        return None


def write_shards(samples: list[tuple[str, int]], classes: list[str], dest: str, shard_bytes: int = SHARD_BYTES,
                 seed: int = 0, source: str = "") -> tuple[ShardSet, list[tuple[str, str]]]:
    """Write (uri, label_index) samples, shuffled, as shards of about shard_bytes, then the index.

    Returns the set written and the [(uri, why)] images that could not be read (left out, for the caller to
    report; `summary` words both), with a progress bar on a terminal (images, images/s). A write that fails (a
    full disk, a bucket we may not write) leaves the shards so far without an index.
    """
    try:
        with tqdm(total=len(samples), desc=dest, unit="img", leave=False, disable=None) as bar:
            return _write_shards(samples, classes, dest, shard_bytes, seed, source, bar.update)
    except OSError as e:
        raise ShardError(f"could not write the shards to {dest} ({first_line(e)}); fix that and write them again "
                         "with --overwrite") from None


def _write_shards(samples, classes, dest, shard_bytes, seed, source, progress) -> tuple[ShardSet, list]:
    order = [(canonical_uri(uri), label) for uri, label in samples]  # file:///x as the tables spell it: /x
    random.Random(seed).shuffle(order)
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    written, failures, buffer, writer, count = [], [], io.BytesIO(), None, 0

    def finish_shard() -> None:
        nonlocal buffer, writer, count
        writer.close()
        name = shard_name(len(written))
        atomic_write_bytes(as_url(fs, f"{root}/{name}"), buffer.getvalue())
        written.append({"name": name, "count": count, "bytes": buffer.tell()})
        buffer, writer, count = io.BytesIO(), None, 0

    for n, ((uri, label), data) in enumerate(zip(order, _read_ahead(uri for uri, _ in order), strict=True)):
        progress(1)
        if isinstance(data, str):
            failures.append((uri, data))
            continue
        writer = writer or TarWriter(buffer, encoder=False, mtime=0)
        writer.write({"__key__": f"{n:09d}", _extension(uri): data,
                      "json": json.dumps({"label": classes[label], "label_index": label, "uri": uri}).encode()})
        count += 1
        if buffer.tell() >= shard_bytes:
            finish_shard()
    if writer:
        finish_shard()
    if not written:
        raise ShardError(f"no image of {source or 'the source'} could be read, so {dest} has no shards")
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "classes": classes, "shards": written,
             "samples": sum(s["count"] for s in written), "source": source, "seed": seed,
             "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_bytes(as_url(fs, f"{root}/{INDEX}"), json.dumps(index, indent=1).encode())
    return _read_index(dest), failures


def summary(written: ShardSet, failures: list[tuple[str, str]], dest: str) -> tuple[str, str, str]:
    """What a command says of a write: one line for stdout, up to 5 of the images left out for stderr, and where
    some were, the one-line error it exits with ("" when none): the shards are complete but for those, and a script
    must not take the set for all of its source, as `export --to imagefolder` does not."""
    megabytes, shards = sum(s.size for s in written.shards) / 2**20, len(written.shards)
    line = (f"wrote {written.count} images in {shards} shard{'s' * (shards != 1)} ({megabytes:.1f} MB) to {dest}; "
            f"{len(failures)} unreadable left out")
    left_out = [f"  {uri}: {why}" for uri, why in failures[:5]]
    error = (f"{len(failures)} images could not be read and are not in {dest} (listed above); fix or remove them "
             "and write again, or train on the shards as they are" if failures else "")
    return line, "\n".join(left_out + ([f"  and {len(failures) - 5} more"] if len(failures) > 5 else [])), error


def _read_ahead(uris: Iterable[str]) -> Iterator[bytes | str]:
    """Each uri's bytes, or why it could not be read, in order, READ_AHEAD reads in flight."""
    def read(uri: str) -> bytes | str:
        try:
            return read_bytes(uri)
        except Exception as e:  # OSError, or a store's own (gcsfs's HttpError): one image left out, not the set
            return f"{type(e).__name__}: {first_line(e)}"

    with ThreadPoolExecutor(READ_AHEAD) as pool:
        pending = []
        for uri in uris:
            pending.append(pool.submit(read, uri))
            if len(pending) >= READ_AHEAD:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _extension(uri: str) -> str:
    _, dot, ext = posixpath.basename(uri).rpartition(".")
    ext = (dot and ext.lower()) or "img"  # gs://b/0a1b2c has none: "img", not "0a1b2c"
    return "jpg" if ext == "jpeg" else ext


def check_destination(dest: str, overwrite: bool) -> None:
    """Refuse a destination that holds shards already, unless overwrite: then its index goes first, so the old
    set stops being readable before any shard of it is removed."""
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    if fs.isfile(root):
        raise ShardError(f"shard destination {dest} is a file; give a folder")
    old = fs.glob(f"{root}/shard-*.tar") if fs.isdir(root) else []
    if fs.exists(f"{root}/{INDEX}"):
        old.insert(0, f"{root}/{INDEX}")
    if old and not overwrite:
        raise ShardError(f"{dest} holds shards already; choose another folder or pass --overwrite")
    for path in old:
        fs.rm(path)
