"""The executor contract: results for every task, retries of failing tasks, dead workers never hang the run."""

from __future__ import annotations

import pytest

from worldmodels_cli import testing as T
from worldmodels_cli.runtime.errors import ConfigError, WorkerError
from worldmodels_cli.runtime.executor import make_executor


@pytest.mark.parametrize("workers", [1, 2])
def test_all_results_and_state_built_once(workers):
    with make_executor(workers, T.init_counter, 100) as ex:
        out = dict(ex.run(T.square, list(range(8))))
    assert {i: v for i, (v, _) in out.items()} == {i: i * i + 100 for i in range(8)}
    assert len({pid for _, pid in out.values()}) <= workers


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_task_is_retried(tmp_path, workers):
    tasks = [(i, str(tmp_path)) for i in range(4)]
    with make_executor(workers, T.init_counter, 0) as ex:
        assert sorted(v for _, v in ex.run(T.flaky, tasks)) == [0, 1, 2, 3]


@pytest.mark.parametrize("workers", [1, 2])
def test_persistent_failure_names_task_and_cause(workers):
    with make_executor(workers, T.init_counter, 0, retries=1) as ex, pytest.raises(WorkerError) as err:
        list(ex.run(T.always_fails, [7], describe=lambda s: f"episode seed={s}"))
    msg = str(err.value)
    assert "episode seed=7" in msg and "broken env for seed 7" in msg and "\n" not in msg


def test_dead_worker_is_replaced_and_task_retried(tmp_path):
    tasks = [(i, str(tmp_path)) for i in range(5)]
    with make_executor(2, T.init_counter, 0) as ex:
        assert sorted(v for _, v in ex.run(T.die_once, tasks)) == [0, 10, 20, 30, 40]


def test_worker_that_always_dies_raises_not_hangs():
    with make_executor(2, T.init_counter, 0, retries=1) as ex, pytest.raises(WorkerError, match="died"):
        list(ex.run(T.die_always, [0, 1, 2], describe=lambda s: f"candidate {s}"))


def test_bad_backend():
    with pytest.raises(ConfigError, match="backend"):
        make_executor(1, T.init_counter, 0, backend="mpi")
    with pytest.raises(ConfigError, match="needs --backend ray"):
        make_executor(1, T.init_counter, 0, address="ray://x:1")
