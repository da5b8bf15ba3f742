"""Zoo of the ``-lora`` models (registered into CompressAI's zoo on import)."""

from .image import *  # noqa: F401,F403
from .image import __all__  # noqa: F401
