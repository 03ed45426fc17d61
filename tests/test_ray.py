"""The Ray backend on a private local 2-CPU instance (no dashboard): same results as local, retries dead actors."""

from __future__ import annotations

import pytest

from worldmodels_cli import testing as T
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.executor import make_executor

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_same_results_as_local(ray_local):
    with make_executor(2, T.init_counter, 5, backend="ray") as ex:
        got = {i: v for i, (v, _) in ex.run(T.square, list(range(10)))}
    with make_executor(1, T.init_counter, 5) as ex:
        want = {i: v for i, (v, _) in ex.run(T.square, list(range(10)))}
    assert got == want


def test_killed_actor_task_is_retried(ray_local, tmp_path):
    tasks = [(i, str(tmp_path)) for i in range(6)]
    with make_executor(2, T.init_counter, 0, backend="ray") as ex:
        got = sorted(v for _, v in ex.run(T.die_once, tasks))
    assert got == [0, 10, 20, 30, 40, 50]
    assert (tmp_path / "died-2").exists(), "the actor really died once"


def test_task_error_is_retried_then_named(ray_local):
    from worldmodels_cli.runtime.errors import WorkerError

    with make_executor(2, T.init_counter, 0, backend="ray", retries=1) as ex, pytest.raises(WorkerError, match="seed=4"):
        list(ex.run(T.always_fails, [4], describe=lambda s: f"episode seed={s}"))


def test_collect_and_evaluate_on_ray_equal_local(ray_local, tmp_path):
    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import collect, evaluate
    from worldmodels_cli.store import artifacts as A

    p = preset("doom", "tiny")
    collect.run(p, tmp_path / "local.h5", runtime=Runtime(seed=4, workers=1))
    collect.run(p, tmp_path / "ray.h5", runtime=Runtime(seed=4, workers=2, backend='ray'))
    with A.open_artifact(tmp_path / "local.h5") as a, A.open_artifact(tmp_path / "ray.h5") as b:
        for key in (A.FRAMES, A.ACTIONS, A.REWARDS, A.EPISODE_SEEDS):
            assert (a[key][()] == b[key][()]).all(), key
    one = evaluate.run(None, policy="data", preset=p, episodes=5, runtime=Runtime(seed=2))
    two = evaluate.run(None, policy="data", preset=p, episodes=5, runtime=Runtime(seed=2, workers=2, backend='ray'))
    assert (one.returns == two.returns).all()


def test_real_env_evolve_on_ray_equals_local_and_resumes_across(ray_local, tiny_world, tmp_path):
    import numpy as np

    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import evolve
    from worldmodels_cli.store import artifacts as A

    p = preset("doom", "tiny")
    p = p.replace(evolve=p.evolve.replace(in_dream=False, pop=4, trials=2, generations=3, eval_every=3, eval_episodes=2))
    evolve.run(p, tiny_world.vae, tiny_world.mdn, tmp_path / "local.h5", runtime=Runtime(seed=1))
    # two generations locally, the third on Ray: the same history as one uninterrupted local run
    short = p.replace(evolve=p.evolve.replace(generations=2))
    evolve.run(short, tiny_world.vae, tiny_world.mdn, tmp_path / "mixed.h5", runtime=Runtime(seed=1))
    evolve.run(p, tiny_world.vae, tiny_world.mdn, tmp_path / "mixed.h5", runtime=Runtime(seed=1, workers=2, backend='ray'))
    with A.open_artifact(tmp_path / "local.h5") as a, A.open_artifact(tmp_path / "mixed.h5") as b:
        np.testing.assert_array_equal(a[A.HISTORY]["mean"][()], b[A.HISTORY]["mean"][()])
        np.testing.assert_array_equal(a[A.MEAN][()], b[A.MEAN][()])


def test_dream_shares_and_ensemble_members_on_ray_equal_local(ray_local, tiny_world, tmp_path):
    """`--workers 2 --backend ray`: the dream's shares (dream/parallel.py) and an ensemble's members (train_ensemble)
    run on Ray actors, with the numbers of one local process."""
    import numpy as np

    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import evolve, train_mdn
    from worldmodels_cli.store import artifacts as A

    p = preset("doom", "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(ensemble=2, val_episodes=0.3, steps=20),
                  evolve=p.evolve.replace(pessimism="halt", generations=3))
    ray_rt = Runtime(seed=1, device="cpu", workers=2, backend="ray")
    for rt, name in ((Runtime(seed=1, device="cpu"), "local"), (ray_rt, "ray")):
        train_mdn.run(p, [tiny_world.series], tmp_path / f"{name}-m.h5", runtime=rt)
        evolve.run(p, tiny_world.vae, tmp_path / f"{name}-m.h5", tmp_path / f"{name}-c.h5", runtime=rt)
    with A.open_artifact(tmp_path / "local-m.h5") as a, A.open_artifact(tmp_path / "ray-m.h5") as b:
        (wa, ca), (wb, cb) = A.read_ensemble(a), A.read_ensemble(b)
        assert ca == cb and len(wa) == len(wb) == 1
        for name, w in wa[0].items():
            np.testing.assert_array_equal(w, wb[0][name], err_msg=name)
    with A.open_artifact(tmp_path / "local-c.h5") as a, A.open_artifact(tmp_path / "ray-c.h5") as b:
        np.testing.assert_array_equal(a[A.HISTORY]["mean"][()], b[A.HISTORY]["mean"][()])
        np.testing.assert_array_equal(a[A.MEAN][()], b[A.MEAN][()])
