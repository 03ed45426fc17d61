"""The trained agents shipped in `pretrained/`: whole, self-contained, documented truly, and (slow) still playing
the games they were scored on exactly as their shipped evaluations say."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from worldmodels_cli.game.agent import agent_spec
from worldmodels_cli.store import artifacts as A

ROOT = Path(__file__).resolve().parents[1] / "pretrained"
AGENTS = ("carracing", "doom")
KINDS = {"vae": "vae.h5", "mdn": "mdn.h5", "controller": "controller.h5", "eval": "eval.h5"}
BUDGET = 25e6  # the bound on all shipped weights together


def _returns(agent: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(ROOT / agent / "eval.h5") as fh:
        return fh[A.RETURNS][()], fh[A.EPISODE_SEEDS][()]


@pytest.mark.parametrize("agent", AGENTS)
def test_shipped_agent_is_whole_and_points_at_its_own_files(agent):
    folder = ROOT / agent
    for kind, name in KINDS.items():
        assert A.validate(folder / name, kind).env == agent
    spec, params, meta = agent_spec(folder / "controller.h5")
    # the controller finds V and M beside it (relative path and checksum), not the machine that made it
    assert Path(spec.vae).resolve() == (folder / "vae.h5").resolve()
    assert Path(spec.mdn).resolve() == (folder / "mdn.h5").resolve()
    assert meta.preset == "small" and params.shape == (spec.build_batch().controller.param_count,)
    for role in ("vae", "mdn"):  # weights only, float16
        with h5py.File(folder / KINDS[role]) as fh:
            assert not fh[A.TRAIN_STATE].keys()
            assert {fh[A.WEIGHTS][k].dtype for k in fh[A.WEIGHTS] if fh[A.WEIGHTS][k].dtype.kind == "f"} == {
                np.dtype(np.float16)}


def test_shipped_agents_fit_the_budget():
    assert sum(p.stat().st_size for p in ROOT.rglob("*.h5")) <= BUDGET


@pytest.mark.parametrize("agent", AGENTS)
def test_pretrained_readme_states_the_shipped_evaluation(agent):
    """The README's figure for each agent is its shipped eval.h5's, so the two cannot drift apart."""
    returns, seeds = _returns(agent)
    assert len(returns) == 100
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{agent}/`"))
    figure = re.search(r"\*\*(-?[\d.]+) ± ([\d.]+)\*\*", row)
    assert figure, row
    assert (float(figure[1]), float(figure[2])) == (round(returns.mean(), 1), round(returns.std(), 1))


@pytest.mark.slow
@pytest.mark.parametrize("agent", AGENTS)
def test_shipped_agent_replays_its_evaluation_in_the_real_game(agent, tmp_path, wm):
    """The first two of its 100 evaluation episodes, run again in the real game from a fresh load: the same
    returns (float tolerance; the same machine type as the one that made them)."""
    returns, seeds = _returns(agent)
    out = tmp_path / "e.h5"
    res = wm("evaluate", "--controller", ROOT / agent / "controller.h5", "--episodes", "2", "--seed", "0",
             "--workers", "1", "--out", out)
    assert res.code == 0, res.err
    again, again_seeds = (h5py.File(out)[k][()] for k in (A.RETURNS, A.EPISODE_SEEDS))
    assert np.array_equal(again_seeds, seeds[:2])
    np.testing.assert_allclose(again, returns[:2], rtol=1e-4)
