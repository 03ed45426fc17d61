"""The Ray backend on a private local 2-CPU instance (no dashboard): same results as local, retries dead actors."""

from __future__ import annotations

import pytest

from worldmodels_cli import testing as T
from worldmodels_cli.executor import make_executor

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
    from worldmodels_cli.errors import WorkerError

    with make_executor(2, T.init_counter, 0, backend="ray", retries=1) as ex, pytest.raises(WorkerError, match="seed=4"):
        list(ex.run(T.always_fails, [4], describe=lambda s: f"episode seed={s}"))
