"""Reading and atomically writing whole objects on any fsspec URL (local paths, gs://, memory://), and the
one rule that spells a file's uri, so the same file always gets the same key in every table."""
import os
import posixpath
import uuid

import fsspec

from common.errors import UserError

# What makes a stored object an image, for the trainer's class folders and the labeling job's patterns alike.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")


def has_extension(path: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """Whether the file name ends in one of `extensions` (without dots, lower case), ignoring case."""
    return path.rsplit("/", 1)[-1].rpartition(".")[2].lower() in extensions


def read_bytes(url: str) -> bytes:
    """A whole file in one request (fs.cat_file): opening it first would ask a bucket for its metadata as well,
    one round trip more for every loose image the trainer reads."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def as_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as the tables spell URIs: plain absolute paths locally, full URLs (gs://...) elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def canonical_uri(uri: str, folder: str = "") -> str:
    """A uri (or pattern) as the tables spell it: `file://` URLs and local paths become plain absolute paths,
    relative ones taken from `folder` (default: the working directory), `..` folded; other URLs unchanged.

    Every input form goes through here (patterns, URI lists, manifests, truth files), so a file named two
    ways is still one key for de-duplication, --skip-existing and queries.
    """
    uri = uri.removeprefix("file://")
    if "://" in uri:
        return uri
    if not uri.startswith("/"):
        fs, base = fsspec.core.url_to_fs(folder or os.getcwd())
        if not is_local(fs):
            return fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, uri)))
        uri = posixpath.join(os.path.abspath(base), uri)
    return posixpath.normpath(uri)


def resolve_uri(uri: str, listing: str) -> str:
    """A uri named in a file (a manifest, a truth CSV, a URI list): relative ones are taken from its folder."""
    return canonical_uri(uri, posixpath.dirname(canonical_uri(listing)))


def glob_urls(pattern: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(pattern)
    return [as_url(fs, p) for p in sorted(fs.glob(path))]


def check_output_file(url: str, option: str) -> None:
    """Refuse, before any work, an output file that is an existing folder (a rename would put the file
    inside it, or fail only after the work is done)."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        raise UserError(f"{option} {url} is a directory; give the path of the file to write")


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write to a hidden temp object beside `url`, then rename, so readers never see half a file.

    On object stores the rename is a server-side copy: the final object appears whole or not at all. A
    local folder at `url` is refused and the temp file removed (a rename would move the file into it);
    commands check their output files up front with check_output_file, on any URL.
    """
    fs, path = fsspec.core.url_to_fs(url)
    parent, _, name = path.rpartition("/")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        if is_local(fs):
            check_output_file(url, "output")
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):  # a full disk fails the write itself
            fs.rm(tmp)
        raise
