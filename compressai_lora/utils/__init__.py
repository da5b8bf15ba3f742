"""Command-line tools (``python -m compressai_lora.utils.<tool>``) and helpers.

Importing this package imports no tool: ``compressai_lora.utils.eval_model``
loads the host's eval_model module, which sets ``torch.set_num_threads(1)``.
"""
