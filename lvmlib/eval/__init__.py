"""Evaluation: what the evaluation reads, Phase-1 retrieval over banks and baselines, latency."""
