"""The agents shipped in pretrained/ (issue 20): each folder is a whole agent that a fresh clone runs as it is."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from worldmodels_cli.game.agent import agent_spec
from worldmodels_cli.store import artifacts as A

ROOT = Path(__file__).resolve().parents[1] / "pretrained"
AGENTS = sorted(p for p in ROOT.iterdir() if p.is_dir())
SHIPPED = {"doom"}  # carracing: to be re-made (pretrained/README.md)
BUDGET = 25e6  # bytes, all agents together (the bound)


def test_the_shipped_agents_are_all_there_within_the_budget():
    assert {p.name for p in AGENTS} == SHIPPED
    assert sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file()) <= BUDGET


@pytest.mark.parametrize("folder", AGENTS, ids=lambda p: p.name)
def test_a_shipped_agent_finds_its_own_v_and_m_and_acts(folder):
    spec, params, meta = agent_spec(folder / "controller.h5")
    assert meta.env == folder.name and meta.summary["complete"]
    assert Path(spec.vae).resolve() == (folder / "vae.h5").resolve()  # beside it, by checksum and relative path
    assert Path(spec.mdn).resolve() == (folder / "mdn.h5").resolve()
    for kind in ("vae", "mdn"):
        with h5py.File(folder / f"{kind}.h5") as fh:  # weights only, float16 (loaded back as float32)
            assert not fh[A.TRAIN_STATE].keys()
            assert {fh[A.WEIGHTS][k].dtype for k in fh[A.WEIGHTS] if fh[A.WEIGHTS][k].dtype.kind == "f"} == {
                np.dtype(np.float16)}
    agent = spec.build_batch()
    agent.start(params[None], [np.random.default_rng(0)])
    frames = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    actions = agent.act(frames, np.array([0]))
    assert actions.shape == (1, meta.model_config["action_dim"]) and np.isfinite(actions).all()


@pytest.mark.parametrize("folder", AGENTS, ids=lambda p: p.name)
def test_a_shipped_agents_evaluation_is_of_this_agent(folder):
    """eval.h5 holds the 100 episodes pretrained/README.md quotes, played by exactly these files."""
    meta = A.validate(folder / "eval.h5", "eval")
    for role in ("controller", "vae", "mdn"):
        assert meta.inputs[role]["sha256"] == A.sha256(folder / f"{role}.h5"), role
    with h5py.File(folder / "eval.h5") as fh:
        returns = fh[A.RETURNS][()]
    assert len(returns) == 100
    readme = (ROOT / "README.md").read_text()
    assert f"{returns.mean():.1f} ± {returns.std():.1f}" in readme  # the figure quoted is this file's


@pytest.mark.slow
def test_the_shipped_doom_agent_beats_the_random_policy_in_the_real_game(tmp_path, wm):
    """20 real episodes of the shipped Doom agent survive at least twice the paper's random policy (210)."""
    out = tmp_path / "e.h5"
    res = wm("evaluate", "--controller", ROOT / "doom/controller.h5", "--episodes", "20", "--workers", "2",
             "--seed", "1", "--out", out)
    assert res.code == 0, res.err
    with h5py.File(out) as fh:
        assert fh[A.RETURNS][()].mean() >= 2 * 210
