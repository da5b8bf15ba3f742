"""The adaptation flags shared by eval_model and the codec (utils/adapt_args.py)."""

import argparse

import pytest

from compressai_lora.adapt import PRESETS, AdaptConfig, Tuning
from compressai_lora.utils import adapt_args, distributed
from compressai_lora.utils.adapt_args import (
    adapt_config_from_args,
    adaptation_flags_given,
    add_adaptation_args,
)

DEFAULT_THREADS = adapt_args.default_threads  # conftest sets one thread


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_adaptation_args(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_presets(monkeypatch):
    monkeypatch.setattr(adapt_args, "default_threads", DEFAULT_THREADS)
    monkeypatch.setattr(distributed, "cpu_count", lambda: 3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args = parse()
    assert not adaptation_flags_given(args)
    assert adapt_config_from_args(args) == AdaptConfig(threads=3)
    fast = adapt_config_from_args(parse("--preset", "fast"))
    assert fast == AdaptConfig(threads=3).replace(**PRESETS["fast"])


def test_threads_default_to_the_cpus_shared_by_the_ranks(monkeypatch):
    """Not the free CPUs of the moment: the same command on the same machine
    keeps its thread count, so its bytes (and a resumed run's) stay."""
    monkeypatch.setattr(adapt_args, "default_threads", DEFAULT_THREADS)
    monkeypatch.setattr(distributed, "cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert adapt_config_from_args(parse()).threads == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert adapt_config_from_args(parse()).threads == 1
    assert adapt_config_from_args(parse("--threads", "2")).threads == 2


def test_flags_override_preset_and_defaults():
    args = parse("--preset", "paper", "--refine-steps", "3", "--rank", "4")
    cfg = adapt_config_from_args(args, metric="ms-ssim", rank=1, lmbda=0.5)
    assert cfg.refine_steps == 3 and cfg.adapt_steps == 2000
    assert cfg.rank == 4 and cfg.metric == "ms-ssim"
    assert cfg.lmbda == 0.5
    args = parse("--form", "full", "--seed", "7", "--threads", "1", "--no-adapt")
    cfg = adapt_config_from_args(args)
    assert (cfg.form, cfg.seed, cfg.threads, cfg.enabled) == ("full", 7, 1, False)


@pytest.mark.parametrize(
    "argv, refine_lr, adapt_lr",
    [
        (["--lr", "0.1"], 0.1, 0.1),
        (["--lr", "0.1", "--adapt-lr", "0.3"], 0.1, 0.3),
        (["--refine-lr", "0.2", "--lr", "0.1"], 0.2, 0.1),
        (["--adapt-lr", "0.3"], Tuning.refine_lr, 0.3),
    ],
)
def test_learning_rates(argv, refine_lr, adapt_lr):
    cfg = adapt_config_from_args(parse(*argv))
    assert (cfg.tuning.refine_lr, cfg.tuning.adapt_lr) == (refine_lr, adapt_lr)


@pytest.mark.parametrize(
    "argv",
    [["--no-adapt"], ["--preset", "default"], ["--adapt-lr", "1"], ["--threads", "1"]],
)
def test_flags_given(argv):
    assert adaptation_flags_given(parse(*argv))


def test_invalid_values_raise_value_error():
    with pytest.raises(ValueError, match="rank"):
        adapt_config_from_args(parse("--rank", "0"))
    with pytest.raises(ValueError, match="refine_lr"):
        adapt_config_from_args(parse("--refine-lr", "-1"))


def test_batch_size_is_a_field_not_yet_a_flag():
    """AdaptConfig.batch_size drives model.compress on a batch; the tools code one
    image at a time, so no tool offers --batch-size yet."""
    assert AdaptConfig().batch_size == 1
    assert AdaptConfig(batch_size=4).batch_size == 4
    with pytest.raises(ValueError, match="batch_size"):
        AdaptConfig(batch_size=0)
    with pytest.raises(SystemExit):
        parse("--batch-size", "4")


def test_anneal_spans_and_the_paper_preset_continues_slow():
    assert adaptation_flags_given(parse("--anneal", "300", "200"))
    cfg = adapt_config_from_args(parse("--anneal", "300", "0"))
    assert (cfg.tuning.refine_anneal, cfg.tuning.adapt_anneal) == (300, None)
    fast = adapt_config_from_args(parse("--preset", "fast", "--anneal", "20", "30"))
    assert (fast.tuning.refine_anneal, fast.tuning.adapt_anneal) == (20, 30)
    with pytest.raises(ValueError, match="--anneal"):
        adapt_config_from_args(parse("--anneal", "-1", "5"))
    with pytest.raises(ValueError, match="refine_anneal"):
        AdaptConfig().replace(refine_anneal=0)
    # paper: slow's settings but the step counts
    paper, slow = AdaptConfig.preset("paper"), AdaptConfig.preset("slow")
    assert paper.replace(refine_steps=400, adapt_steps=350) == slow
    # the default anneals over its own steps: more steps continue it
    default = AdaptConfig()
    spans = (default.tuning.refine_anneal, default.tuning.adapt_anneal)
    assert spans == (default.refine_steps, default.adapt_steps)
