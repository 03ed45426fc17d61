"""The dream's rollouts shared out among worker processes (dream/parallel.py): the same numbers as one program, for a
generation's shape and for the evaluation's (one member), one M or an ensemble, and through `wm evolve --workers`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from worldmodels_cli.config import ControllerConfig, preset
from worldmodels_cli.dream.parallel import shares
from worldmodels_cli.dream.program import MIN_ROWS, DreamFitness
from worldmodels_cli.models.controller import Controller
from worldmodels_cli.models.mdnrnn import load_mdn
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import train_mdn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("P,R,n", [(64, 16, 2), (7, 3, 2), (1, 128, 2), (1, 5, 8), (3, 4, 3), (2, 1, 4),
                                   (3, 3, 2), (1, 9, 2)])
def test_shares_cover_every_rollout_once(P, R, n):
    blocks = shares(P, R, n)
    seen = np.zeros((P, R), dtype=int)
    for p, r in blocks:
        seen[p, r] += 1
    sizes = [(p.stop - p.start) * (r.stop - r.start) for p, r in blocks]
    assert (seen == 1).all() and 1 <= len(blocks) <= n
    assert len(blocks) == 1 or min(sizes) >= MIN_ROWS  # no share in the few-row kernels' reach
    assert len(blocks) == {(64, 16): 2, (7, 3): 2, (1, 128): 2, (1, 5): 1, (3, 4): 3, (2, 1): 1, (3, 3): 1,
                           (1, 9): 2}[P, R]  # every worker busy when there is work enough for it


@pytest.fixture(scope="module")
def ensemble(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "m.h5"
    p = preset("doom", "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(ensemble=3, val_episodes=0.3))
    train_mdn.run(p, [tiny_world.series], out, runtime=Runtime(seed=0, device="cpu"))
    return out


@pytest.mark.parametrize("pessimism", ["off", "halt", "penalty"])
def test_a_pool_of_workers_returns_what_one_program_does(ensemble, pessimism):
    m, _ = load_mdn(ensemble)
    ctrl = Controller(ControllerConfig(features="zch", bias=False), m.cfg.z_dim, m.cfg.hidden, m.cfg.action_dim, "doom")
    params = np.random.default_rng(3).normal(0, 1.0, (6, ctrl.param_count))
    seeds = np.arange(6 * 5).reshape(6, 5) * 7 + 1
    kw = {"tau": 1.15, "max_steps": 120, "pessimism": pessimism, "penalty": 0.5}
    one = DreamFitness.from_artifact(ensemble, ctrl, **kw)
    pool = DreamFitness.from_artifact(ensemble, ctrl, workers=2, **kw)
    try:
        assert one.pool is None and pool.pool is not None
        for p, s in [(params, seeds), (params[:1], np.arange(9)[None, :] + 100)]:  # a generation; the CMA mean's eval
            want, got = one(p, s), pool(p, s)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(pool.last.lengths, one.last.lengths)
            assert pool.metrics() == one.metrics() and pool.last.row_steps >= pool.last.lengths.sum()
        lengths = one.last.lengths
        assert len(set(lengths.ravel().tolist())) > 1  # rollouts that end at different steps
        if pessimism == "halt":  # trials 5..8 of the eval follow members 2, 0, 1, 2: offsets kept across shares
            assert one.last.halted.any()
            np.testing.assert_array_equal(pool.last.halted, one.last.halted)
    finally:
        pool.close()
        one.close()


def test_evolve_with_workers_in_the_dream_is_the_same_run(wm, tiny_world, ensemble, tmp_path):
    """`wm evolve --in-dream --workers 2`: the same history, bit for bit, as with one worker."""
    hist = []
    for workers in (1, 2):
        out = tmp_path / f"c{workers}.h5"
        r = wm("evolve", "--vae", tiny_world.vae, "--mdn", ensemble, "--preset", "tiny", "--in-dream", "--pessimism",
               "halt", "--out", out, "--device", "cpu", "--workers", str(workers), "--seed", "4")
        assert r.code == 0, r.err
        with h5py.File(out, "r") as fh:
            hist.append({k: fh["history"][k][()] for k in fh["history"]})
    assert len(hist[0]["mean"]) == preset("doom", "tiny").evolve.generations
    for k in hist[0].keys() - {"seconds"}:
        np.testing.assert_array_equal(hist[0][k], hist[1][k], err_msg=k)


def test_a_float32_rollout_is_the_same_in_any_batch():
    """In float32, BLAS computes the rows of a 1-3-row matmul with other kernels: compaction keeps `MIN_ROWS` rows,
    so each member's rollouts run alone equal the whole generation's, also over the last few survivors' steps."""
    import torch

    from worldmodels_cli.config import MDNConfig
    from worldmodels_cli.dream.program import dream_rollouts
    from worldmodels_cli.models.mdnrnn import MDNRNN

    torch.manual_seed(0)
    cfg = MDNConfig(z_dim=16, action_dim=1, hidden=48, mixtures=3, done_head=True, restart_input=True)
    m = MDNRNN(cfg).float().eval()
    with torch.no_grad():
        m.head.weight[0] *= 6.0  # dones now and then: lengths spread with a long tail (here 111, 98, 69, 54, …)
        m.head.bias[0] = -0.5
    rng = np.random.default_rng(0)
    mu0, lv0 = rng.normal(size=(5, cfg.z_dim)).astype(np.float32), np.full((5, cfg.z_dim), -2.0, np.float32)
    ctrl = Controller(ControllerConfig(features="zch", bias=False), cfg.z_dim, cfg.hidden, cfg.action_dim, "doom")
    P, R = 4, 12
    params = rng.normal(0, 0.5, (P, ctrl.param_count))
    seeds = np.arange(P * R).reshape(P, R) * 13 + 3
    kw = {"controller": ctrl, "tau": 1.15, "max_steps": 400}
    whole = dream_rollouts(m, seeds, mu0, lv0, params=params, **kw)
    top = np.sort(whole.lengths.ravel())[::-1]
    assert top[0] < 400 and top[0] - top[MIN_ROWS - 1] > 16  # the last few ran on their own for a while
    for p in range(P):
        alone = dream_rollouts(m, seeds[p : p + 1], mu0, lv0, params=params[p : p + 1], **kw)
        np.testing.assert_array_equal(alone.lengths[0], whole.lengths[p])
