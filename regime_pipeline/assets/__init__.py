"""Assets: thin wiring of `core/` to partitions, storage and metadata, grouped by stage."""
