"""``compressai-lora encode|decode|info``: image files to compressed files and back.

Run as ``python -m compressai_lora.utils.codec`` or ``compressai-lora``; see
``__main__.py`` for the command line and :mod:`.format` for the file layout.
"""
