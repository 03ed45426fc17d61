"""Parallelism behind one small interface; stage code never touches pools or queues.

A stage gives an `init(payload)` that builds the worker's heavy state once (V, M, env) and a task function
`fn(state, task)`. `make_executor(workers=K)` runs them in K spawned processes (torch with one thread each), or
inline when K <= 1. Results come back as they finish, tagged with the task's position. A task that raises is
retried; a worker process that dies breaks the pool, which is rebuilt and the unfinished tasks resubmitted. After
`retries` failures the run stops with a WorkerError naming the task (its `describe`), its seed and the cause:
never a silent hang. Each local worker leads its own process group, which holds the game engines it starts: a
broken or interrupted pool is killed group by group, and a worker whose driver died kills its group.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import ConfigError, WorkerError

log = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}


class _TaskFailed(Exception):
    pass


def _worker_init(init: Callable[[Any], Any], payload: Any) -> None:
    # Ctrl-C reaches the whole process group: the driver handles it (and kills the pool); a worker that raised
    # KeyboardInterrupt too would print its own traceback under the driver's one-line message
    with contextlib.suppress(ValueError):  # not the main thread (a Ray actor may be): nothing to do
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since birth; ignored from now on
    if mp.parent_process() is not None:  # a local pool's worker (Ray manages its actors' processes itself)
        _own_process_group()
    _exit_with_parent()
    # one thread per worker: set before torch is imported (stages that need no torch never pay its import)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    _STATE.clear()
    _STATE["state"] = init(payload)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _own_process_group() -> None:
    """Put this worker and every process it starts (vizdoom runs each game's engine as a child process, which
    ignores SIGTERM) in a process group of its own, so that the driver can end a worker with all its engines
    (`_kill_group`), and a Ctrl-C to the driver's group reaches the driver alone, which then does so. And make
    the pipes the worker inherited non-inheritable: an engine that held the pool's pipes open would keep a dead
    worker looking alive to the pool, which would then wait forever."""
    os.setpgid(0, 0)
    for fd in _open_fds():
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _open_fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (not Linux): the usual small range
        return list(range(3, 256))


def _kill_group(pid: int) -> None:
    """SIGKILL the process group of the worker `pid` (the worker, if alive, and the engines it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back (not lost: delivered on leaving) while the pool starts its workers. A spawned worker
    inherits the mask, so a Ctrl-C that lands while it is still importing torch, before `_worker_init` ignores
    SIGINT, cannot print a KeyboardInterrupt traceback from inside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _exit_with_parent() -> None:
    """After a kill -9 of the driver nothing closes a pool's task queue (each worker holds its write end too), so
    its workers would wait on it forever: each waits on its parent's sentinel and, when the parent is gone (even
    if that happened while the worker was still starting), kills its own process group: itself and its engines."""
    parent = mp.parent_process()  # None outside a multiprocessing child (a Ray actor: Ray manages its lifetime)
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the parent's end of the spawn pipe is closed: the parent has exited
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_call(fn: Callable[[Any, Any], Any], task: Any) -> tuple[bool, Any]:
    try:
        return True, fn(_STATE["state"], task)
    except Exception as exc:  # reported to the driver, which names the task and retries
        return False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"


def _worker_close() -> None:
    close = getattr(_STATE.get("state"), "close", None)
    if close is not None:
        close()


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Episode tasks are batch-1 torch calls: one thread is ~50x faster than two fighting on a busy machine."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalExecutor:
    """Inline (workers <= 1) or a pool of spawned processes on this machine."""

    def __init__(self, workers: int, init: Callable[[Any], Any], payload: Any, *, retries: int = 2) -> None:
        if workers < 0:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.workers = max(1, workers)
        self.init, self.payload, self.retries = init, payload, retries
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pids: set[int] = set()  # every worker process the pool started: each leads its own process group
        self._inline_state: Any = None

    # -- lifecycle
    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._shutdown_pool(self._pool)
            self._pool = None
        if self._inline_state is not None:
            close = getattr(self._inline_state, "close", None)
            if close is not None:
                close()
            self._inline_state = None

    def _shutdown_pool(self, pool: cf.ProcessPoolExecutor) -> None:
        # Doom engines must be closed explicitly in each worker before the pool goes away.
        try:
            futures = [pool.submit(_worker_close) for _ in range(self.workers)]
            cf.wait(futures, timeout=10)
        except (BrokenProcessPool, RuntimeError):
            pass
        pool.shutdown(wait=True, cancel_futures=True)

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.init, self.payload),
        )

    # -- running
    def run(
        self,
        fn: Callable[[Any, Any], Any],
        tasks: Sequence[Any],
        describe: Callable[[Any], str] = repr,
    ) -> Iterator[tuple[int, Any]]:
        """Yield (position, result) for every task, in completion order."""
        if self.workers == 1:
            yield from self._run_inline(fn, tasks, describe)
        else:
            yield from self._run_pool(fn, tasks, describe)

    def _run_inline(self, fn, tasks, describe) -> Iterator[tuple[int, Any]]:
        if self._inline_state is None:
            self._inline_state = self.init(self.payload)
        with _one_torch_thread():
            yield from self._inline_tasks(fn, tasks, describe)

    def _inline_tasks(self, fn, tasks, describe) -> Iterator[tuple[int, Any]]:
        for i, task in enumerate(tasks):
            for attempt in range(self.retries + 1):
                try:
                    result = fn(self._inline_state, task)
                    break
                except Exception as exc:  # same retry contract as the pool
                    if attempt == self.retries:
                        raise WorkerError(f"{describe(task)} failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}") from exc
                    log.warning("%s failed (%s); retrying", describe(task), exc)
            yield i, result

    def _run_pool(self, fn, tasks, describe) -> Iterator[tuple[int, Any]]:
        attempts = [0] * len(tasks)
        pending = set(range(len(tasks)))
        while pending:
            if self._pool is None:
                self._pool = self._new_pool()
            with _sigint_blocked():  # workers are spawned by these submits and inherit the mask (see below)
                futures = {self._pool.submit(_worker_call, fn, tasks[i]): i for i in sorted(pending)}
            self._pids |= set(getattr(self._pool, "_processes", {}))  # started by the first submits
            broken = False
            try:
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        ok, value = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        break
                    if ok:
                        pending.discard(i)
                        yield i, value
                        continue
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        raise WorkerError(f"{describe(tasks[i])} failed after {attempts[i]} attempts: {value.splitlines()[0]}")
                    # stays pending: resubmitted in the next round
                    log.warning("%s failed (%s); retrying", describe(tasks[i]), value.splitlines()[0])
            except BaseException:
                self._kill_pool()
                raise
            if broken:
                in_flight = sorted(pending)
                for i in in_flight:
                    attempts[i] += 1
                worst = max(in_flight, key=lambda j: attempts[j])
                self._kill_pool()
                if attempts[worst] > self.retries:
                    raise WorkerError(
                        f"a worker process died {attempts[worst]} times while running {describe(tasks[worst])} "
                        f"(and {len(in_flight) - 1} other pending tasks); cause: the process was killed or crashed"
                    )
                log.warning("a worker process died; restarting the pool and retrying %d tasks", len(in_flight))

    def _kill_pool(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        for pid in self._pids:  # the dead workers' too: their engines may still run
            _kill_group(pid)
        self._pids = set()
        pool.shutdown(wait=True, cancel_futures=True)


class _RayWorker:
    """A Ray actor holding one worker's heavy state (V, M, env) across tasks."""

    def __init__(self, init: Callable[[Any], Any], payload: Any) -> None:
        _worker_init(init, payload)

    def call(self, fn: Callable[[Any, Any], Any], task: Any) -> tuple[bool, Any]:
        return _worker_call(fn, task)

    def close(self) -> None:
        _worker_close()

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """The same contract on a Ray cluster: actors hold state, a dead actor's task is retried on another one
    with the same task (hence the same seeds), the driver sees results exactly as with LocalExecutor.

    `address=None` starts a private local Ray instance with `workers` CPUs and no dashboard."""

    def __init__(self, workers: int, init: Callable[[Any], Any], payload: Any, *, address: str | None = None,
                 retries: int = 2) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'worldmodels_cli[ray]'") from None
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.ray, self.workers, self.retries = ray, workers, retries
        self.init, self.payload = init, payload
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            # process settings a local pool inherits through the environment (CarRacing's renderer)
            forwarded = {k: v for k, v in os.environ.items() if k.startswith("WM_")}
            if forwarded:
                kwargs["runtime_env"] = {"env_vars": forwarded}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"could not connect to Ray at {address or 'a local instance'}: {exc}") from None
            self._owns_ray = True
        else:
            self._owns_ray = False
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=retries, max_task_retries=0)(_RayWorker)
        self.actors = [self._actor_cls.remote(init, payload) for _ in range(workers)]

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        ray = self.ray
        if self.actors:
            try:
                ray.get([a.close.remote() for a in self.actors], timeout=30)
            except Exception:  # an actor that is already gone has nothing to close
                log.debug("closing Ray actors", exc_info=True)
            for a in self.actors:
                ray.kill(a)
            self.actors = []
        if self._owns_ray:
            ray.shutdown()

    def run(self, fn: Callable[[Any, Any], Any], tasks: Sequence[Any],
            describe: Callable[[Any], str] = repr) -> Iterator[tuple[int, Any]]:
        """Yield (position, result) in completion order; one task in flight per actor."""
        ray = self.ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = list(range(len(tasks)))
        attempts = [0] * len(tasks)
        in_flight: dict[Any, tuple[int, Any]] = {}
        idle = list(self.actors)

        def submit() -> None:
            while queue and idle:
                i, actor = queue.pop(0), idle.pop()
                in_flight[actor.call.remote(fn, tasks[i])] = (i, actor)

        submit()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            i, actor = in_flight.pop(ref)
            try:
                ok, value = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                ok, value = False, f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                if isinstance(exc, RayActorError):
                    actor = self._replace(actor)
            idle.append(actor)
            if ok:
                yield i, value
            else:
                attempts[i] += 1
                if attempts[i] > self.retries:
                    raise WorkerError(f"{describe(tasks[i])} failed after {attempts[i]} attempts: {value.splitlines()[0]}")
                log.warning("%s failed (%s); retrying", describe(tasks[i]), value.splitlines()[0])
                queue.insert(0, i)
            submit()

    def _replace(self, dead: Any) -> Any:
        """A fresh actor in place of a dead one (Ray may also restart it; a new one is simplest to reason about)."""
        new = self._actor_cls.remote(self.init, self.payload)
        self.actors = [new if a is dead else a for a in self.actors]
        return new


def make_executor(workers: int, init: Callable[[Any], Any], payload: Any, *, backend: str = "local",
                  address: str | None = None, retries: int = 2):
    """The executor for `--backend local|ray`; both honour the same run() contract."""
    if backend == "local":
        if address:
            raise ConfigError("--ray-address needs --backend ray")
        return LocalExecutor(workers, init, payload, retries=retries)
    if backend == "ray":
        return RayExecutor(workers, init, payload, address=address, retries=retries)
    raise ConfigError(f"unknown --backend {backend!r}; choose local or ray")
