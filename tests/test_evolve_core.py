"""CMA-ES core of `wm evolve` with an analytic fitness: improvement, seed scheme, exact resume by replay."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from worldmodels_cli.config import preset
from worldmodels_cli.runtime.errors import ArtifactError
from worldmodels_cli.stages import evolve
from worldmodels_cli.store import artifacts as A


class Quadratic:
    """Return = -|x - target|^2 + seed-dependent noise: deterministic given (params, seed)."""

    def __init__(self, n):
        self.target = np.linspace(-0.5, 0.5, n)

    def __call__(self, params, seeds):
        noise = (seeds % 7)[None, :] * 0.001 if seeds.shape[0] == 1 else (seeds % 7) * 0.001
        return -((params - self.target) ** 2).sum(axis=1, keepdims=True) + noise

    def close(self):
        pass


def _preset(generations=12, **kw):
    p = preset("doom", "tiny")
    return p.replace(evolve=p.evolve.replace(generations=generations, pop=8, trials=3, eval_every=4, eval_episodes=5, **kw))


def _run(out, p, **kw):
    return evolve.optimize(p, out, fitness=Quadratic(10), n_params=10, model_config={"n": 10}, inputs={}, seed=5, **kw)


def _read(out):
    with A.open_artifact(out, "controller") as fh:
        return ({k: fh[A.HISTORY][k][()] for k in evolve.HISTORY_KEYS if k != "seconds"},
                fh[A.MEAN][()], fh[A.BEST_PARAMS][()])


def test_improves_and_records(tmp_path):
    out = tmp_path / "c.h5"
    res = _run(out, _preset(generations=30))
    hist, mean, best = _read(out)
    assert res.generations == 30 and len(hist["best"]) == 30
    assert hist["mean"][-5:].mean() > hist["mean"][:5].mean()
    evals = ~np.isnan(hist["eval_score"])
    assert evals.sum() == 30 // 4 + 1  # every 4 generations plus the last one
    assert res.best_score == pytest.approx(np.nanmax(hist["eval_score"]))
    meta = A.validate(out, "controller")
    assert meta.summary["complete"] and meta.summary["generations"] == 30


def test_resume_equals_uninterrupted(tmp_path):
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    _run(full, _preset())

    def stop_at_7(gen, row):
        if gen == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(part, _preset(), on_generation=stop_at_7)
    assert A.validate(part, "controller").summary["generations"] == 7
    _run(part, _preset())
    h1, m1, b1 = _read(full)
    h2, m2, b2 = _read(part)
    for k in h1:
        np.testing.assert_array_equal(h1[k], h2[k], err_msg=k)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(b1, b2)


def test_extending_generations_continues(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _run(a, _preset(generations=10))
    _run(b, _preset(generations=6))
    _run(b, _preset(generations=10))  # more generations on the same run continue it
    ha, ma, _ = _read(a)
    hb, mb, _ = _read(b)
    np.testing.assert_array_equal(ha["mean"], hb["mean"])
    np.testing.assert_array_equal(ma, mb)
    with pytest.raises(ArtifactError, match="another run.*sigma0 0.1 vs 0.2"):
        _run(b, _preset(generations=12, sigma0=0.2))  # anything else changed is another run


def test_finished_run_is_not_replayed_but_a_partial_one_is_checked(tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    first = _run(out, _preset(generations=6))
    with monkeypatch.context() as m:  # a finished run returns its record without rebuilding the optimizer
        m.setattr(evolve, "replay", lambda es, f: (_ for _ in ()).throw(AssertionError("replayed")))
        again = _run(out, _preset(generations=6))
    assert (again.generations, again.best_score, again.best_generation) == (6, first.best_score, first.best_generation)
    with h5py.File(out, "r+") as fh:  # a stored mean the replay cannot reproduce is refused when more is asked
        fh[A.MEAN][0] += 1e-9
    with pytest.raises(ArtifactError, match="rebuilt exactly"):
        _run(out, _preset(generations=8))


def test_flat_fitness_runs_all_generations(tmp_path):
    class Flat(Quadratic):
        def __call__(self, params, seeds):
            return np.zeros((params.shape[0], seeds.shape[1]))

    out = tmp_path / "flat.h5"
    res = evolve.optimize(_preset(generations=15), out, fitness=Flat(4), n_params=4, model_config={}, inputs={}, seed=1)
    assert res.generations == 15


def test_generation_seeds_antithetic_pairs():
    cfg = _preset().evolve
    s = evolve.generation_seeds(cfg, 0, 3)
    assert s.shape == (8, 3)
    np.testing.assert_array_equal(s[:4], s[4:])
    assert len(np.unique(s[:4, 0])) == 4
    assert not np.array_equal(s, evolve.generation_seeds(cfg, 0, 4))
    np.testing.assert_array_equal(s, evolve.generation_seeds(cfg, 0, 3))


_REPLAY = """
import hashlib, numpy as np
from worldmodels_cli.stages import evolve
from worldmodels_cli.config import preset
cfg = preset("doom", "tiny").evolve.replace(pop=16)
es = evolve.make_cma(600, cfg, 3)
evolve.replay(es, np.random.default_rng(0).standard_normal((25, 16)))
print(hashlib.sha256(np.asarray(es.mean).tobytes()).hexdigest())
"""


def test_replay_is_exact_under_any_blas_thread_count():
    """A run checkpointed under one OMP_NUM_THREADS resumes under another: pycma's eigendecompositions of a
    Doom-sized (600-parameter) C round differently across BLAS thread counts unless pinned to one."""

    def mean_hash(threads):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
        return subprocess.run([sys.executable, "-c", _REPLAY], env=env, capture_output=True, text=True,
                              check=True, timeout=300).stdout.strip()

    assert mean_hash(1) == mean_hash(4)
