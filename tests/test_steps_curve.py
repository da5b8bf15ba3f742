"""benchmarks/steps_curve.py: its flags and its cache key."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import steps_curve  # noqa: E402

SCHEDULES = ["fast", "300+300", "default"]


def _cell(j: float, update: bool, refined: float = 1.0) -> dict:
    cand = {"base": 2.0, "refined": refined}
    if update:
        cand["update"] = j
    return {"J": j, "choice": "update" if update else "refined", "candidates": cand}


def test_rises_flag_only_a_rise_beyond_the_slack():
    cells = [_cell(1.0, True), _cell(1.004, True), _cell(1.02, True)]
    assert steps_curve.rises(cells, SCHEDULES) == ["fast->default +2.0%"]
    falls = [_cell(1.0, True), None, _cell(0.9, True)]
    assert steps_curve.rises(falls, SCHEDULES) == []


def test_dropped_names_schedules_that_no_longer_send_the_update():
    cells = [_cell(0.9, True), _cell(0.8, False, 0.8), _cell(0.7, True)]
    assert steps_curve.dropped(cells, SCHEDULES) == ["300+300 (sent at fast: -10.0%)"]
    assert steps_curve.dropped([_cell(0.8, False, 0.8)] * 3, SCHEDULES) == []


def test_cache_key_names_the_machine():
    assert steps_curve.machine().endswith(torch.backends.cpu.get_cpu_capability())


def _timed(j: float, seconds: float) -> dict:
    return {"J": j, "seconds": seconds, "base": {"J": 1.0}}


def test_gain_ratio_compares_mean_gain_and_mean_time():
    # default saves 18% and 22% (mean 20%) in 10 s and 30 s; paper saves
    # 25% both times in 100 s: 80% of the gain in 20% of the time
    pairs = [
        (_timed(0.82, 10.0), _timed(0.75, 100.0)),
        (_timed(0.78, 30.0), _timed(0.75, 100.0)),
    ]
    text = steps_curve.gain_ratio(pairs)
    assert text.startswith("default against paper (2 images with both): 80.0% of")
    assert "in 20.0% of the mean time" in text
    assert steps_curve.gain_ratio([]) is None
    # no gain at the long schedule: no ratio to give
    assert steps_curve.gain_ratio([(_timed(0.9, 1.0), _timed(1.0, 2.0))]) is None


def test_reuse_marks_the_cells_taken_from_another_label():
    import argparse

    p = argparse.ArgumentParser()
    codes = {"new": Path("."), "main": Path(".")}
    reuse = steps_curve.parse_reuse(["new=main:fast,300+300"], codes, SCHEDULES, p)
    assert reuse == {("new", "fast"): "main", ("new", "300+300"): "main"}
    for bad in ("new=new:fast", "new=gone:fast", "new=main:paper"):
        try:
            steps_curve.parse_reuse([bad], codes, SCHEDULES, p)
        except SystemExit:
            continue
        raise AssertionError(f"{bad} was accepted")
    img = Path("set/pixel/a.png")
    cell = {**_timed(0.8, 5.0), "choice": "update", "candidates": {}}
    results = {
        ("main", img, "fast"): cell,
        ("new", img, "fast"): {**cell, "from": "main"},
        ("new", img, "300+300"): {**_timed(0.7, 9.0), "choice": "update"},
    }
    text = steps_curve.table(results, [img], SCHEDULES[:2], codes)
    new = text.split("### new")[1].split("### main")[0]
    assert "| -20.0%+ 5s | -30.0% 9s |" in new
    assert "+ = main's job (`--reuse`" in new
    assert "+ =" not in text.split("### main")[1]
