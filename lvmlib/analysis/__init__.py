"""Across runs: comparisons, their verdict, scaling curves, the val-only recipe selection."""
