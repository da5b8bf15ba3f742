"""Out-of-domain benchmark: ``python -m compressai_lora.utils.bench``.

The tool is ``__main__.py`` (``setup_args()``, ``main(argv)``); its parts are
``args``, ``weights``, ``subset``, ``evaluation``, ``records``, ``aggregate``,
``anchors`` (JPEG, WebP, AVIF, JPEG XL through Pillow), ``compare``, ``report``
and ``plots``.
"""

__all__: list[str] = []
