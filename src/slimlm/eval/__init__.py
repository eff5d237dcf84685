"""Measurement: perplexity, speed, memory and size (metrics.py) and the downstream tasks (tasks.py)."""
