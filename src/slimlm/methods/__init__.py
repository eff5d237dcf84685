"""The compression methods, as plain functions on models: layer selection (layers.py), pruning, quantization,
LoRA and GGUF writing. They know nothing of commands, outputs or settings."""
