"""Training tool for base codecs: ``python -m compressai_lora.utils.train``.

See ``docs/training.md``.  Its checkpoints are written with
:func:`compressai_lora.checkpoint.save_checkpoint` and read back with
:func:`compressai_lora.checkpoint.load_state_dict_and_meta` (float32, also
for half-stored files).
"""
