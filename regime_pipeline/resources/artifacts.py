"""Model artifacts: files under ``data/models/`` (or an object-storage prefix), each written atomically with its content hash.

The one place models are written and read. An artifact is a JSON document (parameters of
GARCH or HMM models, feature lists) or a torch/SB3 file added by later stages; nothing is
pickled, so an artifact can be inspected, diffed and loaded without the code that made it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg

from regime_pipeline.core.paths import AnyPath, write_bytes_atomic


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: AnyPath, payload: bytes) -> str:
    """Write `payload` to `path` so no reader sees half of it (a local temporary file and a
    rename, or one upload to object storage); return its sha256."""
    return write_bytes_atomic(path, payload)


class JsonArtifactIOManager(dg.ConfigurableIOManager):
    """Stores an asset's JSON-serialisable output as ``<root>/<asset>.json``.

    :ivar root: a local folder, or an ``s3://bucket/prefix`` location (one upload per file)
    :ivar s3_endpoint_url: an S3-compatible server other than AWS (MinIO, a test server)
    """

    root: str
    s3_endpoint_url: str = ""

    def _path(self, context: dg.OutputContext | dg.InputContext) -> AnyPath:
        from regime_pipeline.resources.storage import location

        return location(self.root, self.s3_endpoint_url) / f"{context.asset_key.path[-1]}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        payload = json.dumps(obj, indent=1, sort_keys=True, default=_jsonable).encode()
        digest = write_bytes_atomic(path, payload)
        context.add_output_metadata(
            {"path": dg.MetadataValue.path(str(path)), "sha256": digest, "bytes": len(payload)}
        )

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {context.asset_key.to_user_string()} first")
        return json.loads(path.read_text())


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, dates: the values model parameters are made of."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a JSON artifact")
