"""eval_model under torchrun: 2 CPU ranks (gloo) give one process's JSON;
a failing or killed rank; resume.  Tiny random models and images.

Starting a rank costs ~15 s here (importing compressai), so the fast test
starts torchrun once and runs several eval_model command lines in it, each
as ``python -m`` runs it (this file is the driver: ``torchrun ...
tests/test_distributed.py SPEC``); the slow test starts
``torchrun -m compressai_lora.utils.eval_model`` itself, twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

TIMING = ("encoding_time", "decoding_time", "adaptation_time")
FAULT_ENV = "COMPRESSAI_LORA_TEST_FAULT"
LORA = ["-a", "bmshj2018-factorized-lora", "--refine-steps", "2", "--adapt-steps", "2"]
LORA += ["--seed", "3", "--threads", "1", "--compare-base"]
# --threads also fixes each rank's threads: the bytes depend on the count
HOST = ["-a", "bmshj2018-factorized", "--threads", "1"]


def untimed(value):
    """``value`` without the timing keys (``base_encoding_time``...)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not k.endswith(TIMING)}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def torchrun(args: list, env: dict | None = None, timeout: int = 300):
    """``torchrun --standalone --nproc-per-node 2 ARGS``: the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", "2", "--max-restarts", "0", *map(str, args)]
    full = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    full.pop(FAULT_ENV, None)
    return subprocess.run(
        cmd,
        env={**full, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parents[1],
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """5 small images (2 ranks x 2 rate points: uneven shares) and 2 tiny
    checkpoints with a lambda."""
    import numpy as np
    import torch
    from compressai.models import FactorizedPrior
    from PIL import Image

    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    data.mkdir()
    for i, (h, w) in enumerate([(64, 64), (48, 40), (64, 32), (32, 32), (40, 56)]):
        rng = np.random.RandomState(i)
        pixels = np.kron(rng.rand(h // 8, w // 8, 3), np.ones((8, 8, 1))) * 200
        pixels += rng.rand(h, w, 3) * 55
        Image.fromarray(pixels.astype(np.uint8)).save(data / f"im{i}.png")
    ckpts = []
    for q, lmbda in ((1, 0.0018), (2, 0.0035)):
        torch.manual_seed(q)
        net = FactorizedPrior(8, 8).eval()
        net.update(force=True)
        path = root / f"fact{q}.pth.tar"
        torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": lmbda}}, path)
        ckpts.append(path)
    return {"root": root, "data": data, "ckpts": ckpts}


def source(env) -> list:
    return ["checkpoint", env["data"], "-p", *env["ckpts"]]


@pytest.fixture(scope="module")
def single(env):
    """The JSON of one process: ``{"lora": ..., "host": ...}``."""
    from compressai_lora.utils.eval_model.__main__ import evaluate

    out = env["root"] / "single"
    lora = [*source(env), *LORA, "--per-image", "-d", out]
    return {
        "lora": evaluate([str(a) for a in lora]),
        "host": evaluate([str(a) for a in [*source(env), *HOST]]),
    }


def _calls(folder: Path, rank: int) -> list[dict]:
    return json.loads((folder / f"calls-{rank}.json").read_text())


def test_torchrun_matches_one_process_fails_and_resumes(env, single, tmp_path):
    out = tmp_path / "out"
    lora = [*source(env), *LORA, "--per-image", "-d", out, "-v"]
    spec = [
        {"argv": [*source(env), *HOST]},  # no files: results by collectives
        {"argv": lora, "env": {FAULT_ENV: "1:0:raise"}},  # rank 1's first image
        {"argv": lora},  # the same command again: resumes
    ]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps([{**c, "argv": list(map(str, c["argv"]))} for c in spec])
    )
    proc = torchrun([Path(__file__), spec_file, tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _calls(tmp_path, 0), _calls(tmp_path, 1)

    # host architecture: the JSON on rank 0's stdout only; every rank's
    # evaluate() gets all of it (as the bench needs)
    assert rank0[0]["code"] == rank1[0]["code"] == 0
    assert rank1[0]["stdout"] == ""
    host = json.loads(rank0[0]["stdout"])
    assert untimed(host) == untimed(single["host"])
    assert host["results"]["bpp"] == single["host"]["results"]["bpp"]
    assert rank0[0]["stderr"].count("Using trained model") == 2
    assert "Using trained model" not in rank1[0]["stderr"]

    # a rank fails on an image: every rank exits 1, rank 0 names rank, image,
    # rate point; the failing rank says so at once
    assert rank0[1]["code"] == rank1[1]["code"] == 1
    assert rank0[1]["stdout"] == rank1[1]["stdout"] == ""
    error = [ln for ln in rank0[1]["stderr"].splitlines() if ln.startswith("Error:")]
    assert len(error) == 1
    assert error[0].startswith("Error: rank 1: image ")
    assert "im1.png (rate point fact1.pth.tar): RuntimeError: test fault" in error[0]
    assert "rerun the same command to resume" in error[0]
    assert "rank 1 failed: image" in rank1[1]["stderr"]
    assert "\nError:" not in "\n" + rank1[1]["stderr"]  # rank 0 says it

    # the rerun resumes (rank 0 finished its first image before it stopped)
    # and gives one process's JSON, files included
    assert rank0[2]["code"] == rank1[2]["code"] == 0
    got = json.loads(rank0[2]["stdout"])
    assert untimed(got) == untimed(single["lora"])
    assert "[rank 0] " in rank0[2]["stderr"] and "(resumed)" in rank0[2]["stderr"]
    assert "[rank 1] " in rank1[2]["stderr"]
    assert json.loads((out / "bmshj2018-factorized-lora-ans.json").read_text()) == got
    ref = env["root"] / "single"
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files
    assert len(names) == 5 * 2 * 2 + 3  # per image x rate point x model; outputs


@pytest.mark.slow
def test_killed_rank_then_rerun(env, single, tmp_path):
    """torchrun -m eval_model; rank 1 dies (SIGKILL) before its second image:
    torchrun stops rank 0, the run fails; the same command then completes."""
    out = tmp_path / "out"
    argv = ["-m", "compressai_lora.utils.eval_model", *source(env), *LORA]
    argv += ["--per-image", "-d", out]
    proc = torchrun(argv, env={FAULT_ENV: "1:1:kill"})
    assert proc.returncode != 0
    assert proc.stdout == ""
    done = list(out.iterdir())
    assert 2 <= len(done) < 20 and not any(".part" in p.name for p in done)

    proc = torchrun(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert untimed(json.loads(proc.stdout)) == untimed(single["lora"])


# -- no torchrun needed -----------------------------------------------------------
def test_world_from_env():
    from compressai_lora.utils.distributed import World, world_from_env

    assert world_from_env({}) == World() == world_from_env({"WORLD_SIZE": "1"})
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    world = world_from_env(env)
    assert world == World(3, 4, 1, 2) and world.distributed and not world.is_main
    for bad, message in (
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "two"}, "not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "outside 0..1"),
        ({**env, "LOCAL_RANK": "2"}, "do not fit"),
        ({"WORLD_SIZE": "0"}, ">= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            world_from_env(bad)


def test_rank_threads():
    from compressai_lora.utils.distributed import World, rank_threads

    assert rank_threads(World(), None, cpus=16) is None  # alone: no change
    assert rank_threads(World(), 4, cpus=16) is None
    assert rank_threads(World(5, 8, 1, 4), None, cpus=16) == 4
    assert rank_threads(World(1, 2, 1, 2), 3, cpus=16) == 3  # --threads wins
    assert rank_threads(World(1, 3, 1, 3), None, cpus=2) == 1


def test_sharding_covers_every_item_once():
    from compressai_lora.utils.distributed import World
    from compressai_lora.utils.eval_model.shard import owned

    for size, runs, images in ((2, 2, 5), (3, 4, 7), (4, 1, 2)):
        items = [
            (run, j)
            for rank in range(size)
            for run in range(runs)
            for j in owned(World(rank, size, rank, size), run, images)
        ]
        assert sorted(items) == [(r, j) for r in range(runs) for j in range(images)]
        counts = [
            sum(len(owned(World(rank, size), r, images)) for r in range(runs))
            for rank in range(size)
        ]
        assert max(counts) - min(counts) <= 1  # round-robin
    assert owned(World(), 3, 4) == [0, 1, 2, 3]


def test_bad_torchrun_environment(env, capsys, monkeypatch):
    from compressai_lora.utils.eval_model.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in [*source(env), *HOST]])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: torchrun environment: RANK is not set")
    assert len(err.splitlines()) == 1


# -- the driver ---------------------------------------------------------------------
def _drive(spec_file: str, folder: str) -> None:
    """Run each command line of the spec as ``python -m`` runs eval_model,
    in this rank; write ``calls-<rank>.json`` (exit code, stdout, stderr)."""
    rank = int(os.environ["RANK"])
    calls = []
    for i, call in enumerate(json.loads(Path(spec_file).read_text())):
        os.environ.pop(FAULT_ENV, None)
        os.environ.update(call.get("env", {}))
        out, err = Path(folder) / f"{i}-{rank}.out", Path(folder) / f"{i}-{rank}.err"
        sys.argv = ["eval_model", *call["argv"]]
        code = 0
        with open(out, "w") as o, open(err, "w") as e:
            with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
                try:
                    runpy.run_module(
                        "compressai_lora.utils.eval_model", run_name="__main__"
                    )
                except SystemExit as stop:
                    code = stop.code
        calls.append(
            {"code": code, "stdout": out.read_text(), "stderr": err.read_text()}
        )
    (Path(folder) / f"calls-{rank}.json").write_text(json.dumps(calls))


if __name__ == "__main__":
    _drive(sys.argv[1], sys.argv[2])
