"""Training tool for base codecs: ``python -m compressai_lora.utils.train``.

See ``docs/training.md``.  Checkpoints are read back with
:func:`compressai_lora.checkpoint.load_state_dict` (float32, also for
half-stored files), re-exported here as ``load_checkpoint``.
"""

from ...checkpoint import load_state_dict as load_checkpoint
from ...checkpoint import save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
