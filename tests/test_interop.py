"""`wm export minari`, `wm import minari`, `wm export safetensors` and the loader in docs/interop.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from synthetic import write_rollouts

from worldmodels_cli.config import ControllerConfig, MDNConfig, VAEConfig
from worldmodels_cli.game.envs import resize64
from worldmodels_cli.interop import minari_format as mf
from worldmodels_cli.models.controller import build_controller, load_controller
from worldmodels_cli.models.mdnrnn import MDNRNN, load_mdn
from worldmodels_cli.models.vae import ConvVAE, load_vae
from worldmodels_cli.stages.evolve import controller_model_config
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import checkpoint

minari = pytest.importorskip("minari")
pytest.importorskip("safetensors")

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


@pytest.fixture
def minari_root(tmp_path, monkeypatch) -> Path:
    """Minari's datasets folder for this test only: nothing outside tmp_path is read or written."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def one_line_error(res) -> str:
    assert res.code == 2, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    return lines[0]


def same_steps(a: Path, b: Path) -> None:
    """Every per-step and episode dataset of two rollouts artifacts is equal (values and dtypes)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        keys = {k for k in fa if isinstance(fa[k], h5py.Dataset)}
        assert keys == {k for k in fb if isinstance(fb[k], h5py.Dataset)}
        for k in keys:
            assert fa[k].dtype == fb[k].dtype, k
            assert np.array_equal(fa[k][()], fb[k][()]), k


# ------------------------------------------------------------------------------------------------ Minari
@pytest.mark.parametrize("env", ["doom", "carracing"])
def test_rollouts_minari_rollouts_round_trip(env, tmp_path, minari_root, wm):
    r = write_rollouts(tmp_path / "r.h5", env=env, lengths=(30, 25, 70, 1), first_id=5)
    res = wm("export", "minari", "--rollouts", r, "--dataset-id", f"wm/{env}-test-v0")
    assert res.code == 0, res.err
    assert "4 episodes, 126 steps" in res.out

    # a Minari dataset Minari itself lists and loads: T+1 observations, the last one the last frame again
    assert f"wm/{env}-test-v0" in minari.list_local_datasets()
    ds = minari.load_dataset(f"wm/{env}-test-v0")
    assert (ds.total_episodes, ds.total_steps) == (4, 126)
    assert ds.storage.metadata[mf.METADATA_KEY]["env"] == env
    with h5py.File(r, "r") as fh:
        for e, ep in enumerate(ds.iterate_episodes()):
            lo, n = int(fh[A.EPISODE_STARTS][e]), int(fh[A.EPISODE_LENGTHS][e])
            assert ep.observations.shape == (n + 1, 64, 64, 3)
            assert np.array_equal(ep.observations[:n], fh[A.FRAMES][lo : lo + n])
            assert np.array_equal(ep.observations[n], ep.observations[n - 1])
            assert np.array_equal(ep.terminations, fh[A.TERMINATED][lo : lo + n])
            assert np.array_equal(ep.truncations, fh[A.TRUNCATED][lo : lo + n])
        seeds = fh[A.EPISODE_SEEDS][()].tolist()
    assert [em["seed"] for em in ds.storage.get_episode_metadata(range(4))] == seeds

    back = tmp_path / "back.h5"
    res = wm("import", "minari", "--dataset-id", f"wm/{env}-test-v0", "--out", back)
    assert res.code == 0, res.err
    meta = A.validate(back, "rollouts")
    assert meta.env == env and meta.config["origin"] == A.validate(r).config
    same_steps(r, back)  # frames, actions, env_actions, rewards, flags, episode starts/lengths/seeds/ids


def _foreign_dataset(dataset_id: str, obs: list[np.ndarray], actions: list[np.ndarray], **kw):
    """A Minari dataset made with Minari's own API, as another tool would."""
    from minari.data_collector import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            observations=o,
            actions=a,
            rewards=np.arange(len(a), dtype=np.float64),
            terminations=np.arange(len(a)) == len(a) - 1,
            truncations=np.zeros(len(a), bool),
        )
        for o, a in zip(obs, actions, strict=True)
    ]
    with warnings.catch_warnings():  # Minari's advice for published datasets (eval env, env spec)
        warnings.simplefilter("ignore", UserWarning)
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            algorithm_name="test",
            author="test",
            author_email="test@example.org",
            code_permalink="none",
            description="test",
            **kw,
        )


def test_import_resizes_other_sizes_and_feeds_the_pipeline(tmp_path, minari_root, wm):
    rng = np.random.default_rng(0)
    lengths = (12, 9)
    obs = [rng.integers(0, 256, (n + 1, 96, 96, 3), dtype=np.uint8) for n in lengths]
    actions = [rng.uniform(-1, 1, (n, 3)).astype(np.float32) for n in lengths]
    # CarRacing-v3's spaces: (96, 96, 3) images, 3 actions; its env spec tells the import the env
    _foreign_dataset("other/car-v0", obs, actions, env="CarRacing-v3", jpeg_encoding=False)

    out = tmp_path / "r.h5"
    res = wm("import", "minari", "--dataset-id", "other/car-v0", "--out", out)
    assert res.code == 0, res.err
    assert "resized from 96x96" in res.out
    meta = A.validate(out, "rollouts")
    assert meta.env == "carracing" and meta.seed == -1
    with h5py.File(out, "r") as fh:
        frames = fh[A.FRAMES][()]
        assert np.array_equal(frames, np.concatenate([np.stack([resize64(f) for f in o[:-1]]) for o in obs]))
        assert np.array_equal(fh[A.ACTIONS][()], np.concatenate(actions))
        assert np.array_equal(fh[A.EPISODE_LENGTHS][()], lengths)
        assert np.array_equal(fh[A.EPISODE_IDS][()], [0, 1])
        assert np.array_equal(fh[A.TERMINATED][()], np.concatenate([np.arange(n) == n - 1 for n in lengths]))

    # what wm train-vae and wm encode read
    res = wm(
        "train-vae", "--rollouts", out, "--preset", "tiny", "--device", "cpu", "--out", tmp_path / "v.h5"
    )
    assert res.code == 0, res.err
    res = wm(
        "encode", "--rollouts", out, "--vae", tmp_path / "v.h5", "--device", "cpu", "--out", tmp_path / "s.h5"
    )
    assert res.code == 0, res.err
    assert A.validate(tmp_path / "s.h5", "series").env == "carracing"


def test_import_needs_the_env_when_the_dataset_does_not_say(tmp_path, minari_root, wm):
    from gymnasium.spaces import Box

    obs = [np.zeros((5, 64, 64, 3), np.uint8)]
    _foreign_dataset(
        "other/doom-v0",
        obs,
        [np.zeros((4, 1), np.float32)],
        jpeg_encoding=False,
        observation_space=Box(0, 255, (64, 64, 3), np.uint8),
        action_space=Box(-1, 1, (1,), np.float32),
    )
    assert "give --env" in one_line_error(
        wm("import", "minari", "--dataset-id", "other/doom-v0", "--out", tmp_path / "a.h5")
    )
    assert "takes 3" in one_line_error(
        wm(
            "import",
            "minari",
            "--dataset-id",
            "other/doom-v0",
            "--env",
            "carracing",
            "--out",
            tmp_path / "a.h5",
        )
    )
    path = minari_root / "other" / "doom-v0"
    res = wm("import", "minari", "--path", path, "--env", "doom", "--out", tmp_path / "a.h5")
    assert res.code == 0, res.err
    assert A.validate(tmp_path / "a.h5", "rollouts").inputs["minari"]["path"] == str(path)


def test_minari_bad_input_is_one_line(tmp_path, minari_root, wm, tiny_vae):
    r = write_rollouts(tmp_path / "r.h5", env="doom", lengths=(6, 5))
    export = ("export", "minari", "--dataset-id")
    assert "is a vae artifact" in one_line_error(wm(*export, "wm/a-v0", "--rollouts", tiny_vae))
    assert "no such file" in one_line_error(wm(*export, "wm/a-v0", "--rollouts", tmp_path / "missing.h5"))
    assert "not a Minari id" in one_line_error(wm(*export, "wm/no version", "--rollouts", r))
    assert wm(*export, "wm/a-v0", "--rollouts", r).code == 0
    assert "never overwritten" in one_line_error(wm(*export, "wm/a-v0", "--rollouts", r))
    assert not list((minari_root / "wm").glob(".*tmp*"))
    dead = _dead_pid()
    stale = minari_root / "wm" / f".b-v0.tmp-{dead}"  # what an export killed with -9 leaves
    (stale / "data").mkdir(parents=True)
    assert wm(*export, "wm/b-v0", "--rollouts", r).code == 0
    assert not stale.exists()

    out = tmp_path / "imported.h5"
    assert "no Minari dataset" in one_line_error(
        wm("import", "minari", "--dataset-id", "wm/absent-v0", "--out", out)
    )
    assert "one of --dataset-id or --path" in one_line_error(wm("import", "minari", "--out", out))
    assert "a doom dataset, but --env carracing" in one_line_error(
        wm("import", "minari", "--dataset-id", "wm/a-v0", "--env", "carracing", "--out", out)
    )

    from gymnasium.spaces import Box

    _foreign_dataset(
        "other/state-v0",
        [np.zeros((4, 8), np.float32)],
        [np.zeros((3, 1), np.float32)],
        observation_space=Box(-1, 1, (8,), np.float32),
        action_space=Box(-1, 1, (1,), np.float32),
    )
    assert "not RGB images" in one_line_error(
        wm("import", "minari", "--dataset-id", "other/state-v0", "--env", "doom", "--out", out)
    )
    assert not out.exists()
    out.write_bytes(b"")
    assert "never overwrites" in one_line_error(
        wm("import", "minari", "--dataset-id", "wm/a-v0", "--out", out)
    )


# ------------------------------------------------------------------------------------------- safetensors
def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-zero everything (biases start at zero) so that a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def _save_model(path: Path, kind: str, model, model_config, env: str) -> Path:
    checkpoint.save(
        path,
        kind,
        state_dict=model.state_dict(),
        model_config=model_config,
        train_state={},
        summary={},
        complete=True,
        config={},
        seed=0,
        inputs={},
        env=env,
    )
    return path


WORLDS = {  # Doom's M (restart input, done head) and C ([z, c, h], no bias); CarRacing with the optional heads/layers
    "doom": (
        MDNConfig(z_dim=8, action_dim=1, hidden=16, mixtures=3, done_head=True, restart_input=True),
        ControllerConfig(features="zch", bias=False),
    ),
    "carracing": (
        MDNConfig(z_dim=8, action_dim=3, hidden=16, mixtures=3, reward_head="regression"),
        ControllerConfig(features="zh", hidden=5, bias=True),
    ),
}


def _world(root: Path, env: str) -> tuple[Path, Path, Path]:
    vcfg = VAEConfig(z_dim=8, enc_channels=(4, 8, 8, 16), dec_channels=(8, 8, 4))
    mcfg, ccfg = WORLDS[env]
    vae, mdn = ConvVAE(vcfg), MDNRNN(mcfg)
    _randomise(vae, 1)
    _randomise(mdn, 2)
    v = _save_model(root / "v.h5", "vae", vae, vcfg, env)
    m = _save_model(root / "m.h5", "mdn", mdn, mcfg, env)
    mc = controller_model_config(ccfg, env, mcfg.z_dim, mcfg.hidden, mcfg.action_dim)
    best = np.random.default_rng(3).normal(size=build_controller(mc).param_count)
    with A.atomic_write(root / "c.h5", "controller", config={}, seed=0, env=env) as fh:
        fh.create_dataset(A.MEAN, data=-best)
        fh.create_dataset(A.BEST_PARAMS, data=best)
        fh.create_group(A.HISTORY)
        A.set_model_config(fh, mc)
    return v, m, root / "c.h5"


@pytest.fixture
def tiny_vae(tmp_path) -> Path:
    return _world(tmp_path, "doom")[0]


def documented_loader() -> dict:
    """The loader block of docs/interop.md, executed: its functions by name."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = next(b for b in blocks if "def load(" in b)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("env", ["doom", "carracing"])
def test_documented_loader_equals_our_models(env, tmp_path, wm):
    v, m, c = _world(tmp_path, env)
    out = tmp_path / "agent.safetensors"
    res = wm("export", "safetensors", "--vae", v, "--mdn", m, "--controller", c, "--out", out)
    assert res.code == 0, res.err
    doc = documented_loader()
    w, cfg = doc["load"](str(out))
    assert cfg["env"] == env
    vae, _ = load_vae(v)
    mdn, _ = load_mdn(m)
    ctrl, _, _ = load_controller(c)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.rand(5, 3, 64, 64, generator=g)
        for ours, theirs in zip(vae.encode(x), doc["vae_encode"](w, x), strict=True):
            torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
        zv = torch.randn(5, 8, generator=g)
        torch.testing.assert_close(doc["vae_decode"](w, zv), vae.decode(zv), rtol=0, atol=0)

        # M over an episode from its start (Doom: restart flag 1 at t = 0), then the same in two calls
        b, t, a_dim = 3, 7, mdn.cfg.action_dim
        z, a = torch.randn(b, t, 8, generator=g), torch.randn(b, t, a_dim, generator=g)
        restart = torch.zeros(b, t)
        restart[:, 0] = 1.0
        ours, _ = mdn(z, a, restart=restart)
        theirs, _ = doc["mdn"](w, cfg["mdn"], z, a)
        first, state = doc["mdn"](w, cfg["mdn"], z[:, :4], a[:, :4])
        rest, _ = doc["mdn"](w, cfg["mdn"], z[:, 4:], a[:, 4:], state)
        for key in ("logpi", "mu", "logsigma", "done_logit", "reward"):
            want = getattr(ours, key)
            if want is None:
                assert theirs[key] is None and (key == "done_logit") == (env == "carracing")
                continue
            torch.testing.assert_close(theirs[key], want)
            torch.testing.assert_close(torch.cat([first[key], rest[key]], 1), want)

        # C on [z, (c,) h] as the agent feeds it, mapped to the env's action
        zc, h, cc = (torch.randn(4, n, generator=g) for n in (8, 16, 16))
        torch.testing.assert_close(
            doc["controller"](w, cfg["controller"], zc, h, cc), ctrl.act(ctrl.features(zc, h, cc))
        )


def test_safetensors_export_parts_and_bad_input(tmp_path, wm):
    from safetensors import safe_open

    v, m, c = _world(tmp_path, "doom")
    out = tmp_path / "c.safetensors"
    assert wm("export", "safetensors", "--controller", c, "--which", "mean", "--out", out).code == 0
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == {"controller.layers.0.weight"}  # Doom's C: one layer, no bias
        assert f.metadata()["format"] == "worldmodels_cli/1"
        got = f.get_tensor("controller.layers.0.weight")
    ctrl, _, _ = load_controller(c, "mean")
    assert torch.equal(got, ctrl.unflatten(ctrl.params)[0][0].T)

    bad = tmp_path / "bad.safetensors"
    assert "at least one of" in one_line_error(wm("export", "safetensors", "--out", bad))
    assert "is a rollouts artifact" in one_line_error(
        wm("export", "safetensors", "--vae", write_rollouts(tmp_path / "r.h5"), "--out", bad)
    )
    assert "no such file" in one_line_error(
        wm("export", "safetensors", "--mdn", tmp_path / "none.h5", "--out", bad)
    )
    (tmp_path / "car").mkdir()
    car_v, _, _ = _world(tmp_path / "car", "carracing")
    assert "different envs" in one_line_error(
        wm("export", "safetensors", "--vae", car_v, "--mdn", m, "--out", bad)
    )
    assert not bad.exists()


# ------------------------------------------------------------------------------------------ wm export agent
def test_exported_agent_runs_anywhere_and_scores_the_same(tiny_world, tmp_path, wm):
    c = tmp_path / "c.h5"
    assert wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", c, "--device", "cpu",
              "--generations", "1").code == 0
    assert wm("evaluate", "--controller", c, "--episodes", "4", "--out", tmp_path / "e.h5").code == 0
    res = wm("export", "agent", "--controller", c, "--out", tmp_path / "agent")
    assert res.code == 0, res.err
    shutil.move(tmp_path / "agent", tmp_path / "moved")  # a fresh clone elsewhere
    agent = tmp_path / "moved"
    assert not h5py.File(agent / "vae.h5")[A.TRAIN_STATE].keys()  # weights only
    assert wm("evaluate", "--controller", agent / "controller.h5", "--episodes", "4",
              "--out", tmp_path / "e2.h5").code == 0
    with h5py.File(tmp_path / "e.h5") as a, h5py.File(tmp_path / "e2.h5") as b:
        assert np.array_equal(a[A.RETURNS][()], b[A.RETURNS][()])  # float32: the same agent, bit for bit
    meta = A.validate(agent / "controller.h5", "controller")
    assert meta.preset == "tiny" and meta.summary["exported_from"]["sha256"] == A.sha256(c)


def test_float16_export_halves_the_weights(tiny_world, tmp_path, wm):
    c = tmp_path / "c.h5"
    assert wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", c, "--device", "cpu",
              "--generations", "1").code == 0
    assert wm("export", "agent", "--controller", c, "--out", tmp_path / "a16", "--float16").code == 0
    with h5py.File(tiny_world.vae) as full, h5py.File(tmp_path / "a16/vae.h5") as half:
        for k in full[A.WEIGHTS]:
            w = full[A.WEIGHTS][k][()]
            assert half[A.WEIGHTS][k].dtype == (np.float16 if w.dtype.kind == "f" else w.dtype)
            assert np.array_equal(half[A.WEIGHTS][k][()], w.astype(half[A.WEIGHTS][k].dtype))
    assert wm("evaluate", "--controller", tmp_path / "a16/controller.h5", "--episodes", "2").code == 0
    res = wm("export", "agent", "--controller", c, "--out", tmp_path / "a16")
    assert res.code == 2 and "not empty" in res.err and res.err.count("\n") == 1
