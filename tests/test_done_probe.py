"""scripts/doom_done_probe.py's scores on logits whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "doom_done_probe", Path(__file__).resolve().parents[1] / "scripts" / "doom_done_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _episode(n: int, death: bool, logits: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.full(n, -5.0)
    for i, v in logits.items():
        x[i] = v
    y = np.zeros(n, bool)
    y[-1] = death
    return x, y


def test_scores_of_known_logits():
    eps = [_episode(30, True, {29: 2.0}),                 # the death step itself over 0
           _episode(30, True, {25: 1.0, 29: -1.0}),       # warned 5 steps ahead, not at the step
           _episode(40, True, {10: 3.0, 39: -4.0}),       # warned only far ahead (a false alarm too)
           _episode(50, False, {})]                       # cut at the cap: no death, no alarm
    got = probe.scores([x for x, _ in eps], [y for _, y in eps])
    assert (got["steps"], got["deaths"]) == (150, 3)
    assert got["recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert got["false_per_1000"] == pytest.approx(1000 * 2 / 147, abs=0.01)  # steps 25 and 10 of 147 non-deaths
    assert (got["warned_5"], got["warned_20"]) == (pytest.approx(2 / 3, abs=1e-4),) * 2
    # ranks: the deaths' logits 2, -1, -4 against 147 others (145 at -5, one 1.0, one 3.0)
    assert got["auc"] == pytest.approx((146 + 145 + 145) / (3 * 147), abs=1e-4)
    x, y = np.concatenate([e[0] for e in eps]), np.concatenate([e[1] for e in eps])
    assert got["bce"] == pytest.approx(np.mean(np.log1p(np.exp(x)) - y * x), abs=1e-4)
