"""The science and the data handling, free of Dagster: plain functions and classes."""
