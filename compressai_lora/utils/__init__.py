"""Command-line tools: ``python -m compressai_lora.utils.<tool>``."""
