"""``python -m compressai_lora.utils.eval_model``: the host's benchmark, adapted.

The tool is ``__main__.py`` (``setup_args()``, ``main(argv)``), as in
CompressAI; its parts are ``images`` (reading, small-image metrics),
``loading`` (weights and checkpoints), ``evaluate`` (the per-image loop,
progress, resume), ``results`` (averages, keys, JSON files) and ``compare``
(``--compare-base``: deltas, BD-rate, RD plot).  None is imported here: they
load the host's eval_model module, which sets ``torch.set_num_threads(1)`` at
import.
"""


class CLIError(Exception):
    """A bad input or setting: reported as one ``Error:`` line, exit status 1."""
