"""compressai-lora: per-image low-rank decoder adaptation for CompressAI.

Importing the package registers ``<arch>-lora`` models (``cheng2020-attn-lora``
and the others) into CompressAI's model registry and zoo.
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

from ._interrupt import quiet_interrupts_when_run_as_tool

quiet_interrupts_when_run_as_tool()  # before the seconds of importing torch

# compressai imports torch_geometric, which warns about torch.jit.script on every
# import under torch 2.14; it is not ours to fix and drowns our tools' stderr.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")
    import compressai
    import compressai.zoo  # noqa: F401  (imports the rest of compressai)

from .host import check_version  # noqa: E402

check_version()  # PROTECTED in host.py lists what it guards

from .models import *  # noqa: E402,F401,F403
from .registry import register_models  # noqa: E402
from .zoo import image_models, model_architectures  # noqa: E402,F401

register_models()

try:
    __version__ = version("compressai-lora")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"
