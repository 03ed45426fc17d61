"""The dream's rollouts spread over worker processes (or Ray actors), one torch thread each.

On a CPU of a few cores, W programs of one thread step about 1.3x as many rows a second as one program on W threads
(the small elementwise steps between the matmuls do not split well; `benchmarks/dream.py` measures both). A rollout's
result does not depend on where it runs or beside which others (its noise is its own seed's; no row reads another),
so the split changes the time and not one number (tests/test_dream_parallel.py)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..runtime.executor import make_executor
from .program import MIN_ROWS, DreamResult


def shares(P: int, R: int, n: int) -> list[tuple[slice, slice]]:
    """At most n (members, trials) blocks that cover P × R rollouts: runs of whole members where there are at least
    as many as blocks (a generation: antithetic members i and i + P/2 share seeds, so the halves cost alike), else
    runs of trials (the CMA mean's evaluation, one member). Fewer blocks where one would start with fewer than
    `MIN_ROWS` rows: a batch that small computes its rows with other kernels than one program would."""
    for k in range(max(1, min(n, P * R)), 0, -1):
        if P >= k:
            blocks = [(slice(int(b[0]), int(b[-1]) + 1), slice(0, R)) for b in np.array_split(np.arange(P), k)]
        else:
            blocks = [(slice(0, P), slice(int(b[0]), int(b[-1]) + 1)) for b in np.array_split(np.arange(R), k)]
        if k == 1 or min((p.stop - p.start) * (r.stop - r.start) for p, r in blocks) >= MIN_ROWS:
            return blocks
    raise AssertionError("unreachable: one block always fits")


def _init(payload: dict) -> Any:
    from .program import DreamFitness

    return DreamFitness.from_artifact(payload["mdn"], payload["controller"], tau=payload["tau"],
                                      max_steps=payload["max_steps"], device="cpu", pessimism=payload["pessimism"],
                                      penalty=payload["penalty"])


def _rollouts(fitness: Any, task: tuple) -> DreamResult:
    params, seeds, first_trial = task
    return fitness.rollouts(params, seeds, first_trial)


class DreamPool:
    """`DreamFitness`'s rollouts on `workers` processes (or Ray actors: `backend`, `address`), each holding the mdn
    artifact's M; one call's P × R rollouts are cut into `shares` and put back together."""

    def __init__(self, mdn_path: str, controller, *, tau: float, max_steps: int, pessimism: str, penalty: float,
                 workers: int, backend: str = "local", address: str | None = None) -> None:
        payload = {"mdn": str(mdn_path), "controller": controller, "tau": tau, "max_steps": max_steps,
                   "pessimism": pessimism, "penalty": penalty}
        self.workers = workers
        self.executor = make_executor(workers, _init, payload, backend=backend, address=address)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> DreamResult:
        t0 = time.perf_counter()
        P, R = seeds.shape
        blocks = shares(P, R, self.workers)
        tasks = [(params[p], seeds[p, r], r.start) for p, r in blocks]
        parts = dict(self.executor.run(_rollouts, tasks, describe=_describe))
        return _merge([parts[i] for i in range(len(blocks))], blocks, P, R, time.perf_counter() - t0)

    def close(self) -> None:
        self.executor.close()


def _describe(task: tuple) -> str:
    seeds, first = task[1], task[2]
    return f"{seeds.shape[0]} members x trials {first}-{first + seeds.shape[1] - 1} of the dream"


def _merge(parts: list[DreamResult], blocks: list[tuple[slice, slice]], P: int, R: int, seconds: float
           ) -> DreamResult:
    """One DreamResult (P, R) from the blocks' results."""
    returns, lengths = np.empty((P, R), dtype=np.float64), np.empty((P, R), dtype=np.int64)
    ens = parts[0].unknown is not None
    unknown = np.empty((P, R), dtype=np.int64) if ens else None
    halted = np.empty((P, R), dtype=bool) if ens else None
    for (p, r), res in zip(blocks, parts, strict=True):
        returns[p, r], lengths[p, r] = res.returns, res.lengths
        if ens:
            unknown[p, r], halted[p, r] = res.unknown, res.halted
    return DreamResult(returns=returns, lengths=lengths, seconds=seconds, row_steps=sum(r.row_steps for r in parts),
                       unknown=unknown, halted=halted, threshold=parts[0].threshold)
