"""Locations that are local files or objects in S3-compatible storage, behind one pathlib API.

Models and reports are written through these paths: a local folder on one machine
(:class:`pathlib.Path`), an ``s3://bucket/prefix`` location in the cluster
(:class:`upath.UPath` over s3fs). Code that writes a file uses :func:`write_bytes_atomic`, which
gives both the same guarantee, that a reader never sees half a file: locally a temporary file
and a rename, on object storage one upload of the whole payload (an object appears complete or
not at all, and S3 has no rename).
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Union

from upath import UPath

AnyPath = Union[Path, UPath]


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL with a scheme other than ``file`` (``s3://bucket/key``)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def storage_path(location: str | os.PathLike, **storage_options: Any) -> AnyPath:
    """`location` as a path: a :class:`UPath` (with `storage_options`, e.g. ``endpoint_url``) for a
    remote URL, else a local :class:`Path`."""
    if isinstance(location, UPath) or (isinstance(location, Path) and not is_remote(location)):
        return location
    if is_remote(location):
        return UPath(str(location), **storage_options)
    return Path(location)


def is_local_path(path: AnyPath) -> bool:
    return not isinstance(path, UPath) or path.protocol in ("", "file", "local")


def write_bytes_atomic(path: AnyPath, payload: bytes) -> str:
    """Write `payload` to `path` so that no reader sees it half-written; return its sha256.

    Local: a temporary file beside it, then a rename. Object storage: one upload of the whole
    payload (a single PUT, not a multipart upload).
    """
    if is_local_path(path):
        path = Path(str(path.path)) if isinstance(path, UPath) else path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    else:
        path.fs.pipe_file(path.path, payload)
    return hashlib.sha256(payload).hexdigest()


def read_bytes(path: AnyPath) -> bytes:
    return path.read_bytes()


def open_for_reading(path: AnyPath) -> BinaryIO:
    """A seekable binary stream of `path`'s content (torch and zip readers seek)."""
    if is_local_path(path):
        return open(Path(str(path.path)) if isinstance(path, UPath) else path, "rb")
    return io.BytesIO(path.read_bytes())


def ensure_folder(path: AnyPath) -> None:
    """Create the local folder `path` (object storage has no folders: nothing to do)."""
    if is_local_path(path):
        Path(str(path.path) if isinstance(path, UPath) else path).mkdir(parents=True, exist_ok=True)
