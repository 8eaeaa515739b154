"""Synthetic data with planted customer groups, and the benchmark."""
