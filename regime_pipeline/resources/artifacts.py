"""Model artifacts: files under ``data/models/``, each written atomically with its content hash.

The one place models are written and read. An artifact is a JSON document (parameters of
GARCH or HMM models, feature lists) or a torch/SB3 file added by later stages; nothing is
pickled, so an artifact can be inspected, diffed and loaded without the code that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import dagster as dg


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, payload: bytes) -> str:
    """Write `payload` to `path` through a temporary file and a rename; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return hashlib.sha256(payload).hexdigest()


class JsonArtifactIOManager(dg.ConfigurableIOManager):
    """Stores an asset's JSON-serialisable output as ``<root>/<asset>.json``."""

    root: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.root) / f"{context.asset_key.path[-1]}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        payload = json.dumps(obj, indent=1, sort_keys=True, default=_jsonable).encode()
        digest = write_atomic(path, payload)
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
