"""Path problems and Ctrl-C in eval_model, bench and train: one line, and what
is already written survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.models import FactorizedPrior
from PIL import Image

from compressai_lora.utils.bench import __main__ as bench
from compressai_lora.utils.eval_model import __main__ as ours
from compressai_lora.utils.train import __main__ as train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    data = root / "data"
    data.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        img = rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(data / f"{i}.png")
    torch.manual_seed(0)
    net = FactorizedPrior(8, 8).eval()
    net.update(force=True)
    ckpt = root / "fact.pth.tar"
    torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": 0.01}}, ckpt)
    (root / "afile").write_text("not a directory")
    return {"root": root, "data": data, "ckpt": ckpt, "file": root / "afile"}


def _eval_argv(setup, *extra):
    argv = ["checkpoint", setup["data"], "-a", "bmshj2018-factorized-lora"]
    return [str(a) for a in argv + ["-p", setup["ckpt"], *extra]]


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], err


@pytest.mark.parametrize("where", ["under-file", "json-is-dir"])
def test_eval_model_bad_output_paths_fail_before_work(setup, tmp_path, capsys, where):
    extra = ["--no-adapt", "-d"]
    if where == "under-file":
        extra += [setup["file"] / "out"]
        expected = "not a directory"
    else:
        (tmp_path / "res.json").mkdir()
        extra += [tmp_path, "-o", "res"]
        expected = "is a directory"
    with pytest.raises(SystemExit) as exc:
        ours.main(_eval_argv(setup, *extra))
    out, err = capsys.readouterr()
    assert exc.value.code == 1 and out == ""
    _one_error_line(err, expected)
    assert "Using trained model" not in err  # refused before any model ran


def test_eval_model_unwritable_output_dir(setup, tmp_path, capsys, monkeypatch):
    """As root every directory is writable: the permission check is simulated."""
    from compressai_lora.utils import paths

    monkeypatch.setattr(paths.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exc:
        ours.main(_eval_argv(setup, "--no-adapt", "-d", tmp_path / "out"))
    assert exc.value.code == 1
    _one_error_line(capsys.readouterr().err, "is not writable")


def test_eval_model_failed_write_keeps_the_results_on_stdout(
    setup, tmp_path, capsys, monkeypatch
):
    def refuse(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ours, "write_json", refuse)
    with pytest.raises(SystemExit) as exc:
        ours.main(_eval_argv(setup, "--no-adapt", "-d", tmp_path))
    out, err = capsys.readouterr()
    assert exc.value.code == 1
    assert len(json.loads(out)["results"]["bpp"]) == 1  # the finished evaluation
    _one_error_line(err, "No space left on device", "on stdout")


def test_bench_output_under_a_file(setup, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", str(setup["data"]), "-o", str(setup["file"] / "b")])
    assert exc.value.code == 1
    _one_error_line(capsys.readouterr().err, "not a directory")


def test_train_output_under_a_file(setup, capsys):
    argv = ["-m", "bmshj2018-factorized", "-d", str(ROOT / "samples"), "--steps", "1"]
    with pytest.raises(SystemExit) as exc:
        train.main(argv + ["--output-dir", str(setup["file"] / "t")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "not a directory" in err


def _start(argv: list[str]) -> subprocess.Popen:
    """A tool in a new process that takes SIGINT as a terminal's Ctrl-C."""
    return subprocess.Popen(
        [sys.executable, "-m", "compressai_lora.utils.eval_model", *argv],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_keeps_finished_images_and_a_rerun_resumes(setup, tmp_path):
    out = tmp_path / "out"
    flags = ["--refine-steps", "150", "--adapt-steps", "150", "--threads", "1"]
    argv = _eval_argv(setup, *flags, "--per-image", "-d", out, "-v")
    proc = _start(argv)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "Interrupted" in stderr
    done = sorted(out.glob("*.json"))
    assert 1 <= len(done) < 3 and stdout == ""
    for path in done:
        assert "results" in json.loads(path.read_text())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files

    rerun = subprocess.run(
        [sys.executable, "-m", "compressai_lora.utils.eval_model", *argv],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stderr.count("(resumed)") == len(done)
    assert len(json.loads(rerun.stdout)["results"]["bpp"]) == 1
    assert len(list(out.glob("*.json"))) == 4  # 3 images and the summary


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_while_the_tool_starts_is_one_line(setup, delay):
    proc = _start(_eval_argv(setup, "--no-adapt"))
    time.sleep(delay)  # inside the imports of torch and compressai
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "Interrupted."
