"""Shared fixtures: run `wm` in-process like the console script, and one tiny trained world model per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from worldmodels_cli.cli import main
from worldmodels_cli.runtime import Runtime


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models stepped a row or a batch at a time: a second OpenMP thread only adds contention (seconds on a
    busy machine). A module uses it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class WmResult:
    code: int
    out: str
    err: str


@pytest.fixture
def wm(capsys):
    """Call `wm ARGS...` through the console entry point; returns exit code, stdout and stderr."""

    def call(*args: str | Path) -> WmResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return WmResult(code, captured.out, captured.err)

    return call


@dataclass(frozen=True)
class TinyWorld:
    """Artifacts of a tiny Doom pipeline on the fake env: rollouts -> V -> series -> M."""

    root: Path
    rollouts: Path
    vae: Path
    series: Path
    mdn: Path


def _build_world(root: Path, env: str, episodes: int, mdn_steps: int) -> TinyWorld:
    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import collect, encode, train_mdn, train_vae

    p = preset(env, "tiny")
    p = p.replace(collect=p.collect.replace(episodes=episodes))
    r, v, s, m = (root / n for n in ("rollouts.h5", "vae.h5", "series.h5", "mdn.h5"))
    collect.run(p, r, runtime=Runtime(seed=0, workers=1))
    train_vae.run(p, [r], v, runtime=Runtime(seed=0, device='cpu'))
    encode.run([r], v, s, runtime=Runtime(device='cpu', seed=0))
    train_mdn.run(p.replace(mdn_train=p.mdn_train.replace(steps=mdn_steps)), [s], m, runtime=Runtime(seed=0, device='cpu'))
    return TinyWorld(root, r, v, s, m)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    return _build_world(tmp_path_factory.mktemp("tiny_doom"), "doom", episodes=12, mdn_steps=30)


@pytest.fixture(scope="session")
def tiny_car_world(tmp_path_factory) -> TinyWorld:
    return _build_world(tmp_path_factory.mktemp("tiny_car"), "carracing", episodes=8, mdn_steps=10)
