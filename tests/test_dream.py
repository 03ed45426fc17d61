"""The dream (worldmodels_cli/dream/; ref §7, §4.4, §C.6-7): the batched program against the plain per-member loop rollout by
rollout (with and without compaction), its fused M against MDNRNN.step and sample_next, the per-rollout random
streams, starts from first frames, τ touching z but not done, the done rate `wm info` reports, and `wm dream`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from worldmodels_cli.cli import cli
from worldmodels_cli.config import ControllerConfig, MDNConfig, VAEConfig, preset
from worldmodels_cli.dream import fused, program, reference, streams
from worldmodels_cli.models.controller import Controller
from worldmodels_cli.models.mdnrnn import MDNRNN, sample_next
from worldmodels_cli.models.vae import ConvVAE
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError
from worldmodels_cli.stages import dream as dream_stage
from worldmodels_cli.stages.info import describe
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import checkpoint

DOOM = MDNConfig(z_dim=6, action_dim=1, hidden=12, mixtures=3, done_head=True, restart_input=True)
CAR_REG = MDNConfig(z_dim=5, action_dim=3, hidden=10, mixtures=2, done_head=True, reward_head="regression")
CAR_SIGN = MDNConfig(z_dim=5, action_dim=3, hidden=10, mixtures=2, done_head=True, reward_head="sign")
CAR_NO_DONE = MDNConfig(z_dim=4, action_dim=3, hidden=8, mixtures=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread only adds contention


def _mdn(cfg: MDNConfig, seed: int = 0, done_bias: float = -1.0, done_scale: float = 6.0) -> MDNRNN:
    """A random float64 M whose done head fires now and then, so dreams end at varied times."""
    torch.manual_seed(seed)
    m = MDNRNN(cfg).double().eval()
    with torch.no_grad():
        m.head.bias.normal_(0, 0.3)
        if cfg.done_head:
            m.head.weight[0] *= done_scale
            m.head.bias[0] = done_bias
    return m


def _starts(z_dim: int, episodes: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(episodes, z_dim)), rng.normal(-1.0, 0.3, size=(episodes, z_dim))


def _controller(cfg: ControllerConfig, mdn: MDNRNN, env: str, members: int, seed: int = 2):
    c = Controller(cfg, mdn.cfg.z_dim, mdn.cfg.hidden, mdn.cfg.action_dim, env)
    return c, np.random.default_rng(seed).normal(0, 0.5, (members, c.param_count))


def _reference(mdn, seeds, mu0, lv0, controller, params, env=None, tau=1.15, max_steps=120, record_z=False):
    P, R = seeds.shape
    out = [[reference.reference_rollout(mdn, int(seeds[p, r]), mu0, lv0, controller=controller,
                                params=None if params is None else params[p], env=env, tau=tau,
                                max_steps=max_steps, record_z=record_z) for r in range(R)] for p in range(P)]
    returns = np.array([[o[0] for o in row] for row in out])
    lengths = np.array([[o[1] for o in row] for row in out])
    return returns, lengths, [[o[2] for o in row] for row in out]


# ------------------------------------------------------------------------------------------ random streams
def _py_word(seed: int, block: int, j: int, stride: int) -> int:
    """splitmix64 in plain Python ints: the stream definition the tensor code must reproduce."""
    m64 = (1 << 64) - 1

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & m64
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & m64
        return x ^ (x >> 31)

    key = mix((seed * 0x9E3779B97F4A7C15 + 0x6A09E667F3BCC909) & m64)
    return mix((key + (block * stride + j + 1) * 0x9E3779B97F4A7C15) & m64)


def test_stream_words_are_splitmix64():
    layout = streams.NoiseLayout(z_dim=6, action_dim=1)
    seeds = [0, 1, 12345, 2**31 - 2, 2**40 + 7]
    bits = streams.block_bits(streams.rollout_keys(seeds), 3, 2 * layout.stride, layout)
    words = layout.stride
    for i, s in enumerate(seeds):
        for j in range(words):
            w = _py_word(s, 3, j, words)
            assert bits[i, j].item() == w >> 41
            assert bits[i, words + j].item() == (w >> 9) & ((1 << 23) - 1)


def test_streams_do_not_depend_on_the_batch():
    layout = streams.NoiseLayout(z_dim=5, action_dim=3)
    keys = streams.rollout_keys(np.arange(50) * 7919)
    full = streams.block_bits(keys, 9, layout.step_uniforms, layout)
    pick = torch.tensor([41, 3, 17])
    assert torch.equal(streams.block_bits(keys[pick], 9, layout.step_uniforms, layout), full[pick])
    u, eps, _ = streams.step_noise(keys, 8, layout, torch.float64)
    u1, eps1, _ = streams.step_noise(keys[[17]], 8, layout, torch.float64)
    assert torch.equal(u[17:18], u1) and torch.equal(eps[17:18], eps1)


def test_uniforms_lie_strictly_inside_zero_one_and_look_uniform():
    layout = streams.NoiseLayout(z_dim=64, action_dim=1)
    u, eps, _ = streams.step_noise(streams.rollout_keys(np.arange(2000)), 0, layout, torch.float32)
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - math.sqrt(1 / 12)) < 0.01
    assert torch.isfinite(eps).all() and abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    assert streams.to_uniform(torch.tensor([0, (1 << 23) - 1]), torch.float32).tolist() == [2.0**-24, 1 - 2.0**-24]
    k = torch.tensor([0, 1, 1 << 22, (1 << 23) - 1])
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.icdf(streams.to_uniform(k, torch.float64))
    assert torch.allclose(streams.to_normal(k, torch.float64), expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(streams.to_normal(k, torch.float32).double(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ fused M
@pytest.mark.parametrize("cfg", [DOOM, CAR_REG, CAR_NO_DONE])
def test_fused_step_equals_mdnrnn_step(cfg):
    m = _mdn(cfg)
    fm = fused.FusedM(m, torch.float64, "cpu")
    b = 4
    g = torch.Generator().manual_seed(0)
    S = fm.new_state(torch.zeros(b, cfg.z_dim, dtype=torch.float64))
    buf = fm.buffers(b)
    state = m.initial_state(b)
    for t in range(5):
        z = torch.randn(b, cfg.z_dim, generator=g, dtype=torch.float64)
        a = torch.rand(b, cfg.action_dim, generator=g, dtype=torch.float64) * 2 - 1
        restart = torch.full((b,), 1.0 if t == 0 else 0.0, dtype=torch.float64)
        S[:, fm.z_], S[:, fm.a_] = z, a
        if fm.restart:
            S[:, fm.r_col] = restart
        Y = fm.step(S, buf)
        out, state = m.step(z, a, restart, state)
        k, zd, m0 = cfg.mixtures, cfg.z_dim, fm.mix0
        logits = Y[:, m0 : m0 + k * zd].view(b, k, zd).transpose(1, 2)  # (B, Z, K)
        assert torch.allclose(torch.log_softmax(logits, -1), out.logpi, atol=1e-12)
        assert torch.allclose(Y[:, m0 + k * zd : m0 + 2 * k * zd].view(b, k, zd).transpose(1, 2), out.mu, atol=1e-12)
        assert torch.allclose(Y[:, m0 + 2 * k * zd : m0 + 3 * k * zd].view(b, k, zd).transpose(1, 2), out.logsigma,
                              atol=1e-12)
        assert torch.allclose(S[:, fm.h_], state[0], atol=1e-12) and torch.allclose(S[:, fm.c_], state[1], atol=1e-12)
        if cfg.done_head:
            assert torch.allclose(Y[:, 0], out.done_logit, atol=1e-12)
        if cfg.reward_head != "none":
            assert torch.allclose(Y[:, 1], out.reward, atol=1e-12)


def test_the_fused_m_reads_all_of_m():
    """M is written once: the dream's layout is built from MDNRNN's weights, and anything M gains that the layout
    does not read fails here by name (then test_fused_step_equals_mdnrnn_step checks the function)."""
    for cfg in (DOOM, CAR_REG, CAR_NO_DONE):
        unread = {name for name, _ in _mdn(cfg).named_parameters()} - fused.FusedM.PARAMETERS
        assert not unread, f"MDNRNN parameters the dream's FusedM does not read: {sorted(unread)}; add them there"
    unknown = {f.name for f in dataclasses.fields(MDNConfig)} - fused.FusedM.CONFIG_FIELDS
    assert not unknown, f"MDNConfig fields the dream's FusedM does not handle: {sorted(unknown)}; add them there"


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.15, 2.0])
def test_fused_sampling_equals_sample_next(tau):
    m = _mdn(DOOM)
    fm = fused.FusedM(m, torch.float64, "cpu", tau)
    b = 64
    S = fm.new_state(torch.randn(b, DOOM.z_dim, dtype=torch.float64))
    buf = fm.buffers(b)
    out, _ = m.step(S[:, fm.z_], S[:, fm.a_], S[:, fm.r_col], None)
    Y = fm.step(S, buf)
    u, eps, _ = streams.step_noise(streams.rollout_keys(np.arange(b)), 0, streams.NoiseLayout(DOOM.z_dim, 1), torch.float64)
    z = torch.empty(b, DOOM.z_dim, dtype=torch.float64)
    fm.sample(Y, u, eps, z, buf)
    assert torch.allclose(z, sample_next(out, tau, eps=eps, u=u), atol=1e-12)


# ------------------------------------------------------------------------------------------ exactness
CASES = {  # M, C (None: the random policy), env, done bias and scale (dreams then end at varied times)
    "doom": (DOOM, ControllerConfig(features="zch", bias=False), "doom", -1.0, 6.0),
    "doom-random": (DOOM, None, "doom", -1.0, 6.0),
    "car-regression": (CAR_REG, ControllerConfig(features="zh", bias=True), "carracing", -1.5, 4.0),
    "car-sign-hidden": (CAR_SIGN, ControllerConfig(features="z", hidden=4), "carracing", -1.5, 4.0),
    "car-no-done-random": (CAR_NO_DONE, None, "carracing", 0.0, 1.0),
}


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "no-compact"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_equals_the_per_member_loop(case, compact):
    mdn_cfg, ctrl_cfg, env, done_bias, done_scale = CASES[case]
    m = _mdn(mdn_cfg, done_bias=done_bias, done_scale=done_scale)
    mu0, lv0 = _starts(mdn_cfg.z_dim)
    P, R, T = 3, 4, 60
    ctrl, params = _controller(ctrl_cfg, m, env, P) if ctrl_cfg else (None, None)
    seeds = np.arange(P * R).reshape(P, R) * 31 + 5
    res = program.dream_rollouts(m, seeds, mu0, lv0, controller=ctrl, params=params, env=env, tau=1.15, max_steps=T,
                           compact=compact, compact_every=2, record_z=True)
    returns, lengths, zs = _reference(m, seeds, mu0, lv0, ctrl, params, env=env, max_steps=T, record_z=True)
    assert np.array_equal(res.lengths, lengths)
    if mdn_cfg.reward_head == "regression":
        assert np.allclose(res.returns, returns, rtol=0, atol=1e-9)
    else:
        assert np.array_equal(res.returns, returns)  # step counts (Doom) or sums of ±1 (sign head)
    for p in range(P):
        for r in range(R):
            n = len(zs[p][r])
            assert np.allclose(res.z[p, r, :n], zs[p][r], atol=1e-9)
            assert np.isnan(res.z[p, r, n:]).all()
    if mdn_cfg.done_head:
        assert len(set(lengths.ravel().tolist())) > 3 and lengths.min() < T  # the done head ended dreams at varied times
    else:
        assert (lengths == T).all()


def test_doom_return_is_the_number_of_steps_including_the_terminal_one():
    m = _mdn(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    res = program.dream_rollouts(m, np.arange(16).reshape(2, 8), mu0, lv0, tau=1.15, max_steps=50)
    assert np.array_equal(res.returns, res.lengths.astype(float))
    assert res.lengths.min() >= 1 and res.lengths.max() <= 50


def test_compaction_changes_nothing_but_the_work():
    m = _mdn(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    ctrl, params = _controller(ControllerConfig(features="zch", bias=False), m, "doom", 4)
    seeds = np.arange(4 * 6).reshape(4, 6) + 1000
    a = program.dream_rollouts(m, seeds, mu0, lv0, controller=ctrl, params=params, max_steps=80, compact=True,
                         compact_every=1, record_z=True)
    b = program.dream_rollouts(m, seeds, mu0, lv0, controller=ctrl, params=params, max_steps=80, compact=False,
                         record_z=True)
    assert np.array_equal(a.lengths, b.lengths) and np.array_equal(a.returns, b.returns)
    assert np.allclose(a.z, b.z, atol=1e-9, equal_nan=True)
    assert a.row_steps == a.rollout_steps < b.row_steps  # finished rows stopped costing compute


def test_float32_program_runs_and_agrees_on_most_rollouts():
    m = _mdn(DOOM)
    m32 = _mdn(DOOM).float()
    mu0, lv0 = _starts(DOOM.z_dim)
    seeds = np.arange(32).reshape(4, 8)
    a = program.dream_rollouts(m, seeds, mu0, lv0, max_steps=40)
    b = program.dream_rollouts(m32, seeds, mu0, lv0, max_steps=40)
    assert (a.lengths == b.lengths).mean() > 0.8  # same streams; float32 rounding may flip a knife-edge choice


# ------------------------------------------------------------------------------------------ semantics
def test_starts_are_first_frames_with_zero_state_and_restart():
    m = _mdn(DOOM)
    mu0 = np.random.default_rng(3).normal(size=(7, DOOM.z_dim))
    lv0 = np.full_like(mu0, -200.0)  # σ ≈ 0: z0 must be exactly one of the stored first-frame means
    res = program.dream_rollouts(m, np.arange(40).reshape(5, 8), mu0, lv0, max_steps=3, record_z=True)
    z0 = res.z[:, :, 0].reshape(-1, DOOM.z_dim)
    match = (z0[:, None, :] == mu0[None]).all(-1)  # (N, E)
    assert (match.sum(1) == 1).all()
    assert len(set(match.argmax(1).tolist())) >= 5  # episodes drawn uniformly, not always the same

    calls = []
    step = m.step

    def spy(z, a, restart, state):
        calls.append((restart.clone(), [s.clone() for s in state]))
        return step(z, a, restart, state)

    m.step = spy
    reference.reference_rollout(m, 0, mu0, lv0, max_steps=3)
    assert calls[0][0].tolist() == [1.0] and all((s == 0).all() for s in calls[0][1])  # ref §7 reset
    assert calls[1][0].tolist() == [0.0] and any((s != 0).any() for s in calls[1][1])


def test_temperature_changes_z_and_not_done():
    m = _mdn(DOOM, done_bias=0.0, done_scale=6.0)  # about half the dreams end at their first step
    mu0, lv0 = _starts(DOOM.z_dim)
    seeds = np.arange(64).reshape(1, 64)
    cold = program.dream_rollouts(m, seeds, mu0, lv0, tau=0.5, max_steps=2, record_z=True)
    hot = program.dream_rollouts(m, seeds, mu0, lv0, tau=2.0, max_steps=2, record_z=True)
    first_done = cold.lengths == 1
    assert 0 < first_done.sum() < 64
    assert np.array_equal(first_done, hot.lengths == 1)  # the done cut-off ignores τ (ref §7)
    assert np.array_equal(cold.z[..., 0, :], hot.z[..., 0, :])
    go = ~first_done[0]
    assert not np.allclose(cold.z[0, go, 1], hot.z[0, go, 1])  # but z' is drawn at τ


def test_random_policy_actions():
    bits = streams.block_bits(streams.rollout_keys(np.arange(3000)), 1, 2, streams.NoiseLayout(4, 3))[:, :1]
    doom = streams.random_action(bits, "doom", torch.float64)
    counts = [(doom == v).float().mean().item() for v in (-1.0, 0.0, 1.0)]
    assert all(abs(c - 1 / 3) < 0.04 for c in counts)  # left / none / right uniformly (ref §B baseline)
    car = streams.random_action(streams.block_bits(streams.rollout_keys(np.arange(500)), 1, 3, streams.NoiseLayout(4, 3)), "carracing",
                          torch.float64)
    assert car[:, 0].min() < -0.9 and car[:, 0].max() > 0.9
    assert (car[:, 1:] >= 0).all() and (car[:, 1:] <= 1).all()


def test_done_rate_is_finite():
    m = _mdn(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    r = program.random_policy_done_rate(m, mu0, lv0, episodes=32, max_steps=200)
    assert all(math.isfinite(v) for v in r.values())
    assert 0 < r["done_fraction"] <= 1 and 1 <= r["mean_length"] <= 200 and r["done_per_step"] > 0


def test_dream_fitness_is_the_mean_over_trials():
    m = _mdn(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    ctrl, params = _controller(ControllerConfig(features="zch", bias=False), m, "doom", 3)
    seeds = np.arange(12).reshape(3, 4)
    fit = program.DreamFitness(m, ctrl, mu0, lv0, tau=1.15, max_steps=40)
    returns = fit(params, seeds)
    assert returns.shape == (3, 4)
    assert np.array_equal(program.dream_fitness(m, ctrl, params, seeds, mu0, lv0, tau=1.15, max_steps=40),
                          returns.mean(axis=1))
    fit.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_program_matches_cpu():
    m = _mdn(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    seeds = np.arange(48).reshape(4, 12)
    ctrl, params = _controller(ControllerConfig(features="zch", bias=False), m, "doom", 4)
    cpu = program.dream_rollouts(m, seeds, mu0, lv0, controller=ctrl, params=params, max_steps=60)
    gpu = program.dream_rollouts(m.cuda(), seeds, mu0, lv0, controller=ctrl, params=params, max_steps=60)
    assert np.array_equal(cpu.lengths, gpu.lengths)


# ------------------------------------------------------------------------------------------ artifacts, CLI
def _write_models(tmp_path, z_dim: int = DOOM.z_dim, vae_z: int | None = None):
    m = _mdn(DOOM).float()
    mu0, lv0 = _starts(z_dim)
    common = {"train_state": None, "summary": {}, "complete": True, "config": {}, "seed": 0, "inputs": {},
              "env": "doom"}
    checkpoint.save(tmp_path / "m.h5", "mdn", state_dict=m.state_dict(), model_config=DOOM,
                    extra=lambda fh: A.write_initial_z(fh, mu0, lv0), **common)
    vcfg = VAEConfig(z_dim=vae_z or z_dim, enc_channels=(4, 8, 8, 16), dec_channels=(8, 8, 4))
    checkpoint.save(tmp_path / "v.h5", "vae", state_dict=ConvVAE(vcfg).state_dict(), model_config=vcfg, **common)
    return tmp_path / "m.h5", tmp_path / "v.h5"


def test_info_reports_the_random_policy_done_rate(tmp_path):
    mdn_path, _ = _write_models(tmp_path)
    report = describe(mdn_path)
    dr = report["dream_random_policy"]
    assert math.isfinite(dr["done_fraction"]) and math.isfinite(dr["mean_length"]) and dr["done_fraction"] > 0


def _frames(path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.n_frames


def test_wm_dream_writes_a_gif(tmp_path):
    mdn_path, vae_path = _write_models(tmp_path)
    out = tmp_path / "dream.gif"
    res = cli.main(["dream", "--vae", str(vae_path), "--mdn", str(mdn_path), "--episodes", "3", "--max-steps", "25",
                    "--out", str(out), "--device", "cpu"], standalone_mode=False)
    assert res is None and out.exists()
    assert 1 <= _frames(out) <= 25
    from PIL import Image

    with Image.open(out) as im:  # 3 episodes of 64x64 with 2-pixel gaps, enlarged 3x by default
        assert im.size == (3 * (3 * 64 + 2 * 2), 3 * 64)
    cli.main(["dream", "--vae", str(vae_path), "--mdn", str(mdn_path), "--episodes", "1", "--max-steps", "5",
              "--scale", "1", "--out", str(out), "--device", "cpu"], standalone_mode=False)
    with Image.open(out) as im:
        assert im.size == (64, 64)


def test_wm_dream_with_a_controller(tmp_path):
    mdn_path, vae_path = _write_models(tmp_path)
    ctrl = Controller(ControllerConfig(features="zch", bias=False), DOOM.z_dim, DOOM.hidden, 1, "doom")
    mc = {"controller": ctrl.cfg.to_dict(), "env": "doom", "z_dim": DOOM.z_dim, "hidden": DOOM.hidden, "action_dim": 1}
    with A.atomic_write(tmp_path / "c.h5", "controller", env="doom") as fh:
        fh.create_dataset(A.MEAN, data=np.zeros(ctrl.param_count))
        fh.create_dataset(A.BEST_PARAMS, data=np.full(ctrl.param_count, 0.1))
        fh.create_group(A.HISTORY)
        A.set_model_config(fh, mc)
    res = dream_stage.run(D_config(), vae_path, mdn_path, tmp_path / "d.gif", controller_path=tmp_path / "c.h5", runtime=Runtime(device='cpu'))
    assert res.episodes == 2 and res.frames == max(res.lengths) == _frames(tmp_path / "d.gif")
    assert res.returns == [float(n) for n in res.lengths]


def D_config():
    from worldmodels_cli.config import DreamConfig

    return DreamConfig(episodes=2, max_steps=20)


def test_wm_dream_refuses_mismatched_models(tmp_path):
    mdn_path, vae_path = _write_models(tmp_path, vae_z=3)
    with pytest.raises(ArtifactError, match="latent size"):
        dream_stage.run(D_config(), vae_path, mdn_path, tmp_path / "d.gif", runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="expected a mdn artifact"):
        dream_stage.run(D_config(), vae_path, vae_path, tmp_path / "d.gif", runtime=Runtime(device='cpu'))
    assert not (tmp_path / "d.gif").exists()


def test_carracing_in_its_dream_needs_a_reward_head_and_then_runs(wm, tiny_car_world, tmp_path):
    """CarRacing's M has no done head: `--in-dream` refuses it until `wm train-mdn --reward-head` gives it rewards
    to dream; its controller then plays the real game like any other."""
    w = tiny_car_world
    c = tmp_path / "c.h5"
    r = wm("evolve", "--vae", w.vae, "--mdn", w.mdn, "--preset", "tiny", "--in-dream", "--out", c, "--device", "cpu")
    assert r.code == 2 and "done or reward head" in r.err and not c.exists()
    m = tmp_path / "m.h5"
    assert wm("train-mdn", "--series", w.series, "--preset", "tiny", "--reward-head", "regression", "--out", m,
              "--device", "cpu").code == 0
    meta = A.validate(m, "mdn")
    assert meta.config["mdn"]["reward_head"] == "regression" and not meta.config["mdn"]["done_head"]
    r = wm("evolve", "--vae", w.vae, "--mdn", m, "--preset", "tiny", "--in-dream", "--out", c, "--device", "cpu")
    assert r.code == 0, r.err
    dream_score = A.validate(c, "controller").summary["best_score"]
    assert np.isfinite(dream_score) and dream_score != preset("carracing", "tiny").env.max_steps  # rewards, not +1s
    r = wm("evaluate", "--controller", c, "--episodes", "2", "--preset", "tiny")
    assert r.code == 0 and "controller c.h5 on carracing: return" in r.out, r.err
    assert wm("train-mdn", "--series", w.series, "--reward-head", "other", "--out", tmp_path / "x.h5").code == 2
