"""Command-line tools of compressai-lora (one package per tool, as in CompressAI)."""
