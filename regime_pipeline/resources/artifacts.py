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
    """Stores an asset's JSON-serialisable output as ``<root>/<asset>.json``, or for a
    partitioned asset ``<root>/<asset>/<partition>.json`` (a multi-partition's key ``2024|3`` as
    ``2024/3.json``). An asset declared with ``metadata={"artifacts": "by_partition"}`` returns
    ``{partition: artifact}`` and may write several partitions in one run; any other writes one.
    An input loads one artifact, or ``{partition: artifact}`` of the partitions materialized so
    far when it says so with ``AssetIn(metadata={"artifacts": "by_partition"})`` (e.g. every
    origin's policy, for a report that says which are missing).

    :ivar root: a local folder, or an ``s3://bucket/prefix`` location (one upload per file)
    :ivar s3_endpoint_url: an S3-compatible server other than AWS (MinIO, a test server)
    """

    root: str
    s3_endpoint_url: str = ""

    def _paths(self, context: dg.OutputContext | dg.InputContext) -> dict[str | None, AnyPath]:
        from regime_pipeline.resources.storage import location

        root = location(self.root, self.s3_endpoint_url)
        name = context.asset_key.path[-1]
        if not context.has_asset_partitions:
            return {None: root / f"{name}.json"}
        return {key: root / name / f"{str(key).replace('|', '/')}.json" for key in context.asset_partition_keys}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        paths = self._paths(context)
        what = context.asset_key.to_user_string()
        if (context.definition_metadata or {}).get("artifacts") == "by_partition":
            if not isinstance(obj, dict) or set(obj) != set(paths):
                raise ValueError(f"{what}: expected one artifact per partition of the run ({', '.join(map(str, paths))})")
            artifacts = {paths[key]: obj[key] for key in paths}
        elif len(paths) != 1:
            raise ValueError(f"{what}: a model artifact is written one partition at a time, not {len(paths)}")
        else:
            artifacts = {next(iter(paths.values())): obj}
        sizes, digest = 0, ""
        for path, artifact in artifacts.items():
            payload = json.dumps(artifact, indent=1, sort_keys=True, default=_jsonable).encode()
            digest = write_bytes_atomic(path, payload)
            sizes += len(payload)
        first = next(iter(artifacts))
        if len(artifacts) == 1:
            context.add_output_metadata({"path": dg.MetadataValue.path(str(first)), "sha256": digest, "bytes": sizes})
        else:
            context.add_output_metadata({"path": dg.MetadataValue.path(str(first.parent)), "files": len(artifacts),
                                         "bytes": sizes})

    def load_input(self, context: dg.InputContext) -> Any:
        paths = self._paths(context)
        if (context.definition_metadata or {}).get("artifacts") == "by_partition":
            return {key: json.loads(path.read_text()) for key, path in paths.items() if path.exists()}
        for key, path in paths.items():
            if not path.exists():
                what = context.asset_key.to_user_string() + (f" [{key}]" if key is not None else "")
                raise FileNotFoundError(f"{path} does not exist: materialize {what} first")
        if len(paths) != 1:
            raise ValueError(f"{context.asset_key.to_user_string()}: {len(paths)} partitions for one artifact; "
                             "declare the input with metadata={'artifacts': 'by_partition'}")
        return json.loads(next(iter(paths.values())).read_text())


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, dates: the values model parameters are made of."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a JSON artifact")
