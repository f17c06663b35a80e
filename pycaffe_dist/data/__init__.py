"""Datasets: LMDB, Datum, transformation and the prefetch pipeline."""
