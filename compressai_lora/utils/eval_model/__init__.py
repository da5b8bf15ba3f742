"""``python -m compressai_lora.utils.eval_model``: the host's benchmark, adapted.

The tool is ``__main__.py`` (``setup_args()``, ``main(argv)``), as in
CompressAI; its parts are ``images`` (reading, small-image metrics),
``loading`` (weights and checkpoints), ``plan`` (architectures, rate points,
names, paths), ``evaluate`` (the per-image loop, step bar, resume), ``shard``
(torchrun ranks: who evaluates what, the run's bar, gathering), ``results``
(averages, keys, JSON files) and ``compare`` (``--compare-base``: deltas,
BD-rate, RD plot).  None is imported here: they
load the host's eval_model module, which sets ``torch.set_num_threads(1)`` at
import.
"""


class CLIError(Exception):
    """A bad input or setting: reported as one ``Error:`` line, exit status 1."""
