"""Datasets: the in-memory sample types, the bundled offline datasets and the on-disk formats."""
