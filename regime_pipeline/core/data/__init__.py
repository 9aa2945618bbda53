"""Market data: bar schemas and rules, the minute lake, data-quality rules and the sources."""
