"""Out-of-domain benchmark: ``python -m compressai_lora.utils.bench``.

The tool is ``__main__.py`` (``setup_args()``, ``main(argv)``); its parts are
``args``, ``subset``, ``evaluation``, ``records``, ``aggregate`` and
``report``.
"""

__all__: list[str] = []
