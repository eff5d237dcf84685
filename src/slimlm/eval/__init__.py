"""Measurement: perplexity, speed, memory and size (metrics.py) and the downstream tasks (tasks.py: the registry;
cloze.py, summarization.py offline; lm_eval.py through lm-evaluation-harness)."""
