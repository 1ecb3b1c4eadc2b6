"""Reading and atomically writing whole objects on any fsspec URL (local paths, gs://, memory://)."""
import os
import posixpath
import uuid

import fsspec


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def as_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as the tables spell URIs: plain absolute paths locally, full URLs (gs://...) elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def resolve_uri(uri: str, manifest: str) -> str:
    """A uri listed in a manifest file, as the tables spell URIs: absolute ones unchanged, relative ones
    taken from the manifest's folder, with `..` folded, so the same file always gets the same key."""
    if "://" in uri or uri.startswith("/"):
        return uri
    fs, path = fsspec.core.url_to_fs(manifest)
    base = posixpath.dirname(os.path.abspath(path) if is_local(fs) else path)
    return as_url(fs, posixpath.normpath(posixpath.join(base, uri)))


def glob_urls(pattern: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(pattern)
    return [as_url(fs, p) for p in sorted(fs.glob(path))]


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write to a hidden temp object beside `url`, then rename, so readers never see half a file.

    On object stores the rename is a server-side copy: the final object appears whole or not at all.
    """
    fs, path = fsspec.core.url_to_fs(url)
    parent, _, name = path.rpartition("/")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise
