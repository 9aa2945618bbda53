"""The Dagster instance's storage: SQLite, with each batch of events written in one transaction.

``dagster.yaml`` names :class:`BatchingSqliteEventLogStorage` as the ``event_log_storage``
(beside Dagster's own SQLite run and schedule storages, on the same folders as the default
``storage: sqlite``). No asset code depends on it.
"""

from regime_pipeline.instance.event_log import (
    CHECKED_DAGSTER_VERSIONS,
    BatchingSqliteEventLogStorage,
    dagster_version_checked,
)

__all__ = ["CHECKED_DAGSTER_VERSIONS", "BatchingSqliteEventLogStorage", "dagster_version_checked"]
