"""Out-of-domain benchmark: ``python -m compressai_lora.utils.bench``."""

__all__: list[str] = []
