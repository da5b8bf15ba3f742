"""The base-codec training tool and half-precision checkpoint storage.

Tiny runs (N=8, 64x64 patches from ``samples/``): a few seconds in all.
"""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.zoo.image import model_architectures as host_architectures
from PIL import Image

import compressai_lora
from compressai_lora.adapt import AdaptConfig
from compressai_lora.checkpoint import (
    half_storage_keys,
    load_state_dict,
    load_state_dict_and_meta,
    save_checkpoint,
    sha256,
)
from compressai_lora.host import ENTROPY_BUFFERS
from compressai_lora.host import bottleneck_medians as host_medians
from compressai_lora.utils.train.__main__ import ImageBank, main
from compressai_lora.utils.train.models import base_architectures, build_model
from compressai_lora.utils.train.quantizer import decoder_quantizer

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TINY = ["-N", "8", "--patch-size", "64", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def host_load_checkpoint():
    """``eval_model``'s loader (its import sets torch threads to 1: undone)."""
    threads = torch.get_num_threads()
    from compressai.utils.eval_model.__main__ import load_checkpoint

    torch.set_num_threads(threads)
    return load_checkpoint


def train(out: Path, *args: str) -> dict:
    argv = ["-d", str(SAMPLES), "--output-dir", str(out), *TINY, *args]
    return main(argv)


def model_size_params(arch: str):
    return inspect.signature(base_architectures()[arch].__init__).parameters


def _entropy_keys(state_dict):
    return [k for k in state_dict if k.rsplit(".", 1)[-1] in ENTROPY_BUFFERS]


def test_train_writes_checkpoint_and_resumes_exactly(
    tmp_path, capsys, host_load_checkpoint
):
    arch = ["-m", "bmshj2018-factorized", "-M", "8", "-q", "2"]
    first = train(tmp_path / "a", *arch, "--steps", "2")
    ckpt = tmp_path / "a" / "bmshj2018-factorized-N8-q2.pth.tar"
    assert ckpt.is_file() and (tmp_path / "a" / f"{ckpt.stem[:-4]}.json").is_file()
    assert first["steps"] == 2 and first["lmbda"] == 0.0035
    assert first["sha256"] == sha256(ckpt)
    assert set(first["final_train_batch"]) >= {"psnr_db", "bpp"}
    meta = load_state_dict_and_meta(ckpt)[1]
    assert meta["arch"] == "bmshj2018-factorized" and meta["steps"] == 2
    assert (meta["N"], meta["M"], meta["patch"], meta["batch"]) == (8, 8, 64, 2)

    # automatic resume: the step count continues...
    second = train(tmp_path / "a", *arch, "--steps", "4")
    assert second["steps"] == 4 and load_state_dict_and_meta(ckpt)[1]["steps"] == 4
    assert [s["from_step"] for s in second["sessions"]] == [0, 2]
    # ...and gives what an uninterrupted run gives, bit for bit
    train(tmp_path / "b", *arch, "--steps", "4")
    resumed = load_state_dict(ckpt)
    straight = load_state_dict(tmp_path / "b" / ckpt.name)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)

    # a run with other settings does not resume someone else's state
    with pytest.raises(SystemExit):
        train(tmp_path / "a", *arch[:-1], "4", "--name", ckpt.name[:-8], "--steps", "9")
    assert "other settings" in capsys.readouterr().err
    assert load_state_dict_and_meta(ckpt)[1]["steps"] == 4

    # fine-tuning at another lambda starts from those weights, counts on
    tuned = train(tmp_path / "c", *arch[:-1], "1", "--init", str(ckpt), "--steps", "5")
    assert (tuned["steps"], tuned["init"]["steps"], tuned["lmbda"]) == (5, 4, 0.0018)
    assert tuned["optimizer"].startswith("fine-tuned from")

    # the host's eval_model loads it, and so do our -lora models
    host = host_load_checkpoint("bmshj2018-factorized", False, str(ckpt))
    lora = compressai_lora.zoo.model_architectures[
        "bmshj2018-factorized-lora"
    ].from_state_dict(resumed)
    lora.eval()
    lora.adapt_config = AdaptConfig(enabled=False)  # compare the codecs themselves
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = host.compress(x), lora.compress(x)
    assert a["strings"] == b["strings"][:-1]


def test_half_storage_round_trip(tmp_path, host_load_checkpoint):
    out = train(tmp_path, "-m", "cheng2020-attn", "--steps", "1", "--half-storage")
    assert out["storage"] == "float16" and out["M"] == 8
    ckpt = tmp_path / out["file"]
    raw = torch.load(ckpt, weights_only=True)
    assert raw["meta"]["storage"] == "float16" and raw["meta"]["M"] is None
    raw = raw["state_dict"]
    assert raw["g_s.1.conv1.weight"].dtype == torch.float16
    assert raw["context_prediction.mask"].dtype == torch.float16  # exact 0/1
    for k in ("context_prediction.weight", "entropy_parameters.0.weight"):
        assert raw[k].dtype == torch.float32, k  # they set mu: KEEP_FLOAT32
    assert raw["entropy_bottleneck.quantiles"].dtype == torch.float32
    assert raw["g_a.0.gdn.gamma"].dtype == torch.float32

    # float32 again, entropy tables exact, everything else as the trainer had it
    trained = torch.load(
        tmp_path / f"{ckpt.name[:-8]}.state.pth.tar", weights_only=True
    )["state_dict"]
    sd = load_state_dict(ckpt)
    assert sd.keys() == trained.keys() and _entropy_keys(sd)
    half = set(half_storage_keys(trained))
    for k, v in sd.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k
        if k in half:
            assert torch.equal(v, trained[k].half().float()), k
        else:
            assert torch.equal(v, trained[k]), k

    # the host's loader (float16 copied into float32 parameters) builds the
    # same model as ours, and the entropy tables it recomputes are the trained
    host = host_load_checkpoint("cheng2020-attn", False, str(ckpt))
    ours = compressai_lora.zoo.model_architectures[
        "cheng2020-attn-lora"
    ].from_state_dict(sd)
    ours.update(force=True)
    for (k, a), b in zip(host.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(torch.equal(host.state_dict()[k], trained[k]) for k in _entropy_keys(sd))


def test_convert_carries_json_over(tmp_path):
    net = host_architectures["bmshj2018-hyperprior"](8, 8)
    src = tmp_path / "src" / "tiny.pth.tar"
    save_checkpoint(src, net, {"arch": "bmshj2018-hyperprior", "steps": 7})
    facts = {"file": src.name, "sha256": sha256(src), "steps": 7, "hardware": "x"}
    (src.parent / "tiny.json").write_text(json.dumps(facts))
    info = main(
        ["--convert", str(src), "--half-storage", "--output-dir", str(tmp_path)]
    )
    new = tmp_path / "tiny.pth.tar"
    assert json.loads((tmp_path / "tiny.json").read_text()) == info
    assert info["sha256"] == sha256(new) and info["storage"] == "float16"
    assert info["source"]["sha256"] == facts["sha256"]
    assert (info["steps"], info["hardware"]) == (7, "x")
    assert info["conversion"]["entropy_tables_identical"]
    raw = torch.load(new, weights_only=True)["state_dict"]
    assert raw["g_a.0.weight"].dtype == torch.float16
    assert load_state_dict_and_meta(new)[1]["steps"] == 7


@pytest.mark.parametrize(
    "folder, message",
    [
        ("missing", "does not exist"),
        ("empty", "holds no images"),
        ("kodak", "looks like a test set"),
    ],
)
def test_bad_data_folder(tmp_path, capsys, folder, message):
    if folder != "missing":
        (tmp_path / folder).mkdir()
    argv = ["-m", "bmshj2018-factorized", "-d", str(tmp_path / folder)]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--steps", "1", "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_settings(tmp_path, capsys):
    base = ["-d", str(SAMPLES), "--output-dir", str(tmp_path)]
    for argv, message in [
        (["-m", "cheng2020-attn", "-M", "8", "--steps", "1"], "has no M"),
        (["-m", "cheng2020-attn"], "--steps and/or --minutes"),
        (["--steps", "1"], "-m/--model"),
    ]:
        with pytest.raises(SystemExit):
            main(base + argv)
        assert message in capsys.readouterr().err


def test_16_bit_images_keep_their_range(tmp_path):
    """A 16-bit grayscale PNG is scaled to 8 bits, not clipped at 255."""
    Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16)).save(tmp_path / "g.png")
    bank = ImageBank(tmp_path, (64, 64))
    assert bank.images[0].shape == (3, 64, 64)
    assert bank.images[0].unique().tolist() == [round(30000 / 257)]  # 117


@pytest.mark.parametrize(
    "arch", sorted(a for a in base_architectures() if not a.endswith("-vbr"))
)
def test_ste_quantizer_feeds_g_s_the_decoders_latents(arch):
    """``ste``: g_s decodes round(y - mu) + mu, the rate is still the noisy one."""
    torch.manual_seed(0)
    net = build_model(arch, 8, 8 if "M" in model_size_params(arch) else None)
    net.train()
    x = torch.rand(1, 3, 64, 64)
    seen: dict = {}
    mu_of: dict = {}

    def keep_means(module, args, kwargs):
        mu_of["mu"] = kwargs.get("means", args[2] if len(args) > 2 else None)
        mu_of["y"] = args[0].detach()

    def keep_input(module, args):
        seen.setdefault("in", []).append(args[0])

    outs = {}
    for kind in ("noise", "ste"):
        hooks = []
        if hasattr(net, "gaussian_conditional"):
            hooks.append(
                net.gaussian_conditional.register_forward_pre_hook(
                    keep_means, with_kwargs=True
                )
            )
        torch.manual_seed(1)
        with decoder_quantizer(net, kind):
            hooks.append(net.g_s.register_forward_pre_hook(keep_input))
            outs[kind] = net(x)
        for h in hooks:
            h.remove()
        v = seen["in"][-1]
        y = net.g_a(x).detach() if "y" not in mu_of else mu_of["y"]
        if kind == "ste":
            mu = mu_of.get("mu")
            if not hasattr(net, "gaussian_conditional"):
                mu = host_medians(net.entropy_bottleneck).detach()
            q = torch.round(y) if mu is None else torch.round(y - mu) + mu
            assert torch.allclose(v, q, atol=1e-5)
            v.sum().backward()  # straight through: the encoder gets a gradient
            assert next(net.g_a.parameters()).grad.abs().sum() > 0
        else:
            assert not torch.allclose(v, torch.round(v))
    for name in outs["noise"]["likelihoods"]:
        assert torch.equal(
            outs["noise"]["likelihoods"][name], outs["ste"]["likelihoods"][name]
        )


def test_ste_recipe_is_recorded_and_not_mixed(tmp_path, capsys):
    arch = ["-m", "bmshj2018-hyperprior", "-M", "8", "-q", "3", "--steps", "2"]
    info = train(tmp_path, *arch, "--quantizer", "ste")
    assert info["quantizer"].startswith("g_s decodes round(y - mu) + mu")
    noise = train(tmp_path / "n", *arch)
    assert noise["quantizer"].startswith("g_s decodes y + uniform noise")
    with pytest.raises(SystemExit):  # a noise run does not resume an ste state
        train(tmp_path, *arch[:-1], "3")
    assert "quantizer" in capsys.readouterr().err


def test_init_transforms_carries_g_a_and_g_s_over(tmp_path, capsys):
    size = ["-M", "8", "-q", "3"]
    src = train(tmp_path / "m", "-m", "mbt2018-mean", *size, "--steps", "2")
    ckpt = tmp_path / "m" / src["file"]
    out = train(
        tmp_path / "h",
        *["-m", "bmshj2018-hyperprior", *size, "--steps", "0"],
        *["--init-transforms", str(ckpt)],
    )
    assert out["steps"] == 0 and out["init"]["modules"] == ["g_a", "g_s"]
    assert out["optimizer"].startswith("g_a and g_s initialized from")
    a = load_state_dict(ckpt)
    b = load_state_dict(tmp_path / "h" / out["file"])
    moved = [k for k in b if k.startswith(("g_a.", "g_s."))]
    assert moved and all(torch.equal(a[k], b[k]) for k in moved)
    assert not torch.equal(a["h_a.0.weight"], b["h_a.0.weight"])
    with pytest.raises(SystemExit):  # other transforms: refused, nothing written
        train(
            tmp_path / "c",
            "-m",
            "cheng2020-attn",
            "-q",
            "3",
            "--steps",
            "1",
            "--init-transforms",
            str(ckpt),
        )
    assert "do not fit" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
