"""``python -m compressai_lora.utils.eval_model``: the host's benchmark, adapted.

The tool lives in ``__main__.py`` (as in CompressAI); it is not imported here
because it loads the host's eval_model module, which sets
``torch.set_num_threads(1)`` at import.
"""
