"""Text in: corpora split into train/validation/test blocks (corpus.py) and instruction data (instructions.py)."""
