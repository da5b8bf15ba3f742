"""eval_model --batch-size: images of the same padded size adapted together.

Through the tool, each image's results match its unbatched run's (the same
choice and gates, costs up to float reduction order); images of other padded
sizes go into other batches; the settings record the batch size (resume).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from test_eval_model import _save_image, fails, run  # noqa: E402  (same directory)

from compressai_lora import models as lora_models
from compressai_lora.utils.eval_model import __main__ as ours
from compressai_lora.utils.eval_model.batches import batches, padded_size

LMBDA = 0.05
STEPS = ["--refine-steps", "6", "--adapt-steps", "12", "--seed", "3"]
#: (name, padded size) of the dataset: three pad to 64x64, one to 128x64
IMAGES = {"a": (64, 64), "b": (40, 56), "c": (70, 64), "d": (64, 48)}
REL = 2e-3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    for seed, (name, (h, w)) in enumerate(IMAGES.items()):
        _save_image(root / "data" / f"{name}.png", h, w, seed)
    for cls, file in ((ScaleHyperprior, "hyper"), (MeanScaleHyperprior, "mean")):
        torch.manual_seed(1)
        net = cls(8, 8).eval()
        net.update(force=True)
        torch.save({"state_dict": net.state_dict()}, root / f"{file}.pth.tar")
    return root


@pytest.fixture
def batch_sizes(monkeypatch):
    """The batch size of every adapted ``compress()`` call."""
    seen: list[int] = []
    compress = lora_models.LoRAModelMixin.compress

    def recording(self, x):
        seen.append(x.size(0))
        return compress(self, x)

    monkeypatch.setattr(lora_models.LoRAModelMixin, "compress", recording)
    return seen


def _argv(env, out: Path, arch: str, file: str, *extra) -> list:
    argv = ["checkpoint", env / "data", "-a", arch, "-p", env / f"{file}.pth.tar"]
    return [*argv, "--lmbda", LMBDA, *STEPS, "--per-image", "-d", out, *extra]


def _per_image(out: Path) -> dict[str, dict]:
    files = sorted(out.glob("[abcd]-*.json"))
    return {f.name[0]: json.loads(f.read_text()) for f in files}


def test_padded_size_is_the_hosts():
    assert padded_size(64, 64) == (64, 64)
    assert padded_size(40, 56) == (64, 64)
    assert padded_size(70, 64) == (128, 64)


def test_batches_group_by_padded_size_in_order():
    sizes = {"a": (64, 64), "b": (70, 64), "c": (40, 40), "d": (64, 64), "e": (1, 1)}
    items = [(i, Path(n)) for i, n in enumerate(sizes)]

    def size_of(path):
        return sizes[str(path)]

    groups = batches(items, 2, size_of)
    assert [[str(p) for _, p in g] for g in groups] == [["a", "c"], ["d", "e"], ["b"]]
    assert [len(g) for g in batches(items, 8, size_of)] == [4, 1]
    assert batches(items, 1, size_of) == [[item] for item in items]
    with pytest.raises(ValueError, match="batch_size"):
        batches(items, 0, size_of)


@pytest.mark.parametrize(
    "arch, file",
    [("bmshj2018-hyperprior-lora", "hyper"), ("mbt2018-mean-lora", "mean")],
)
def test_batched_results_match_unbatched(
    env, tmp_path, capsys, batch_sizes, arch, file
):
    alone, _ = run(ours.main, _argv(env, tmp_path / "alone", arch, file), capsys)
    assert batch_sizes == [1, 1, 1, 1]
    batch_sizes.clear()
    together, _ = run(
        ours.main,
        _argv(env, tmp_path / "batched", arch, file, "--batch-size", "4"),
        capsys,
    )
    assert batch_sizes == [3, 1]  # a, b, d pad to 64x64; c to 128x64
    assert together["adaptation"]["batch_size"] == 4
    assert "batch_size" not in alone["adaptation"]
    assert together["adaptation"]["choices"] == alone["adaptation"]["choices"]

    mine, theirs = _per_image(tmp_path / "batched"), _per_image(tmp_path / "alone")
    assert sorted(mine) == ["a", "b", "c", "d"]
    for name in mine:
        got, want = mine[name]["adaptation"], theirs[name]["adaptation"]
        assert got["choice"] == want["choice"], name
        assert got.get("open_gates") == want.get("open_gates"), name
        for candidate, j in want["J"].items():
            assert got["J"][candidate] == pytest.approx(j, rel=REL), (name, candidate)
        rv, rv0 = mine[name]["results"], theirs[name]["results"]
        assert rv["bpp"] == pytest.approx(rv0["bpp"], rel=0.02), name
        assert rv["psnr-rgb"] == pytest.approx(rv0["psnr-rgb"], abs=0.05), name
        # what the tool reports is what the strings decode to: J from it
        mse = 10 ** (-rv["psnr-rgb"] / 10)
        sent = got["J"][got["choice"]]
        assert rv["bpp"] + LMBDA * 255**2 * mse == pytest.approx(sent, rel=1e-3)


def test_resume_with_a_batch_loads_what_is_done(env, tmp_path, capsys, batch_sizes):
    out = tmp_path / "out"
    argv = _argv(env, out, "bmshj2018-hyperprior-lora", "hyper", "--batch-size", "4")
    first, _ = run(ours.main, argv, capsys)
    (out / "b-hyper-ans.json").unlink()
    batch_sizes.clear()
    second, _ = run(ours.main, argv, capsys)
    assert batch_sizes == [1]  # only b is computed again
    assert second["results"]["psnr-rgb"][0] == pytest.approx(
        first["results"]["psnr-rgb"][0], abs=0.05
    )
    # another batch size is another setting: nothing stored counts
    batch_sizes.clear()
    run(ours.main, _argv(env, out, "bmshj2018-hyperprior-lora", "hyper"), capsys)
    assert batch_sizes == [1, 1, 1, 1]


def test_bad_batch_sizes(env, tmp_path, capsys):
    argv = _argv(env, tmp_path, "bmshj2018-hyperprior-lora", "hyper")
    err = fails([*argv, "--batch-size", "0"], capsys)
    assert "batch_size must be >= 1" in err
    err = fails([*argv, "--batch-size", "2", "--entropy-estimation"], capsys)
    assert "--batch-size needs real bitstreams" in err
