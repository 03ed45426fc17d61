"""M (models/mdnrnn.py): sizes, LSTM semantics, sequence == one-step API, the mixture NLL against
torch.distributions, the done loss weighting and temperature sampling (ref §4, §C.2, §C.4, §C.5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

from worldmodels_cli.config import MDNConfig, preset
from worldmodels_cli.models.mdnrnn import (
    MDNRNN,
    MDNOutput,
    count_parameters,
    done_bce,
    is_done,
    mdn_nll,
    reward_loss,
    sample_next,
)

DOOM_TINY = MDNConfig(z_dim=5, action_dim=1, hidden=7, mixtures=3, done_head=True, restart_input=True,
                      reward_head="regression")


def _inputs(cfg: MDNConfig, b: int, t: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, t, cfg.z_dim, generator=g, dtype=dtype)
    a = torch.rand(b, t, cfg.action_dim, generator=g, dtype=dtype) * 2 - 1
    return z, a


def _mixture(logits, mu, sigma) -> MDNOutput:
    """A known per-dimension mixture broadcast to `shape` (..., Z, K)."""
    return MDNOutput(logpi=F.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1),
                     mu=torch.as_tensor(mu, dtype=torch.float64), logsigma=torch.log(torch.as_tensor(sigma, dtype=torch.float64)))


# ------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(("env", "params", "width"), [("carracing", 422_368, 35), ("doom", 1_678_785, 66)])
def test_parameter_counts_match_the_paper(env, params, width):
    model = MDNRNN(preset(env, "paper").mdn)
    assert count_parameters(model) == params  # ref §4.2, §4.3
    assert model.input_dim == width


def test_one_bias_and_no_hidden_bias_parameter():
    names = {n for n, _ in MDNRNN(DOOM_TINY).named_parameters()}
    assert names == {"weight_ih", "weight_hh", "bias", "head.weight", "head.bias"}
    assert "_zero_bias" not in MDNRNN(DOOM_TINY).state_dict()


def test_output_shapes_and_normalised_log_weights():
    m = MDNRNN(DOOM_TINY)
    z, a = _inputs(DOOM_TINY, 3, 4, torch.float32)
    out, (h, c) = m(z, a)
    assert out.logpi.shape == out.mu.shape == out.logsigma.shape == (3, 4, 5, 3)
    assert out.done_logit.shape == out.reward.shape == (3, 4)
    assert h.shape == c.shape == (3, 7)
    torch.testing.assert_close(out.logpi.exp().sum(-1), torch.ones(3, 4, 5))
    step, _ = m.step(z[:, 0], a[:, 0])
    assert step.mu.shape == (3, 5, 3) and step.done_logit.shape == (3,)


def test_no_optional_heads_when_off():
    cfg = MDNConfig(z_dim=4, action_dim=3, hidden=6, mixtures=2)
    out, _ = MDNRNN(cfg)(*_inputs(cfg, 2, 3, torch.float32))
    assert out.done_logit is None and out.reward is None
    assert MDNRNN(cfg).head.out_features == 4 * 2 * 3


def test_head_layout_done_at_column_zero_then_rows_of_logpi_mu_logsigma():
    """ref §4.1/§4.3: column 0 is the done logit, then per latent dimension [logπ(K), μ(K), logσ(K)]."""
    cfg = DOOM_TINY
    m = MDNRNN(cfg).double()
    k, nz = cfg.mixtures, cfg.z_dim
    bias = torch.arange(m.out_dim, dtype=torch.float64)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.copy_(bias)
    out, _ = m(*_inputs(cfg, 1, 1))
    assert out.done_logit.item() == 0.0
    for zi in range(nz):
        row = 1 + zi * 3 * k
        torch.testing.assert_close(out.logpi[0, 0, zi], F.log_softmax(bias[row : row + k], -1))
        torch.testing.assert_close(out.mu[0, 0, zi], bias[row + k : row + 2 * k])
        torch.testing.assert_close(out.logsigma[0, 0, zi], bias[row + 2 * k : row + 3 * k])
    assert out.reward.item() == m.out_dim - 1.0


# --------------------------------------------------------------------------------------- the LSTM
def _reference_lstm(m: MDNRNN, z, a, restart):
    """The reference cell written out (ref §4.1): TF LayerNormBasicLSTMCell without layer norm, one bias, state
    reset to zero before a step whose restart flag is 1 (ref §4.3)."""
    b, t, _ = z.shape
    hh = torch.zeros(b, m.cfg.hidden, dtype=z.dtype)
    cc = torch.zeros_like(hh)
    hs = []
    for i in range(t):
        keep = (1 - restart[:, i]).unsqueeze(-1)
        hh, cc = hh * keep, cc * keep
        x = torch.cat([z[:, i], a[:, i], restart[:, i, None]], -1)
        gates = x @ m.weight_ih.T + hh @ m.weight_hh.T + m.bias
        ig, fg, gg, og = gates.chunk(4, -1)
        cc = cc * torch.sigmoid(fg) + torch.sigmoid(ig) * torch.tanh(gg)
        hh = torch.tanh(cc) * torch.sigmoid(og)
        hs.append(hh)
    return torch.stack(hs, 1), (hh, cc)


def _restarts(b: int, t: int) -> torch.Tensor:
    r = torch.zeros(b, t, dtype=torch.float64)
    r[0, 0] = r[0, 3] = r[0, 7] = r[1, 5] = r[2, 1] = r[2, 2] = 1  # mid-sequence, at t=0, consecutive
    return r


def test_forward_matches_the_reference_cell_with_restarts():
    m = MDNRNN(DOOM_TINY).double()
    z, a = _inputs(DOOM_TINY, 3, 9)
    r = _restarts(3, 9)
    out, (h, c) = m(z, a, r)
    hs, (h_ref, c_ref) = _reference_lstm(m, z, a, r)
    ref = m.head_outputs(hs)
    for name in ("logpi", "mu", "logsigma", "done_logit", "reward"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)


def test_forget_bias_starts_at_one():
    """The reference adds forget_bias = 1.0 inside the cell; here it is folded into the f block of the bias."""
    m = MDNRNN(DOOM_TINY)
    h = DOOM_TINY.hidden
    assert torch.all(m.bias[h : 2 * h] == 1) and torch.all(m.bias[:h] == 0) and torch.all(m.bias[2 * h :] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_api_equals_one_step_api_with_restarts(dtype):
    m = MDNRNN(DOOM_TINY).to(dtype)
    z, a = _inputs(DOOM_TINY, 3, 9, dtype)
    r = _restarts(3, 9).to(dtype)
    init = tuple(torch.randn(3, 7, dtype=dtype) for _ in range(2))  # a carried state, not zeros
    out, (h, c) = m(z, a, r, init)
    state, steps = init, []
    for t in range(9):
        o, state = m.step(z[:, t], a[:, t], r[:, t], state)
        steps.append(o)
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for name in ("logpi", "mu", "logsigma", "done_logit", "reward"):
        torch.testing.assert_close(torch.stack([getattr(o, name) for o in steps], 1), getattr(out, name), **tol)
    torch.testing.assert_close(state[0], h, **tol)
    torch.testing.assert_close(state[1], c, **tol)


def test_restart_resets_the_state_before_the_step():
    m = MDNRNN(DOOM_TINY).double()
    z, a = _inputs(DOOM_TINY, 1, 6)
    r = torch.zeros(1, 6, dtype=torch.float64)
    r[0, 3] = 1
    out, _ = m(z, a, r, tuple(torch.randn(1, 7, dtype=torch.float64) for _ in range(2)))
    fresh, _ = m(z[:, 3:], a[:, 3:], r[:, 3:])  # from zero state
    torch.testing.assert_close(out.mu[:, 3:], fresh.mu, rtol=0, atol=1e-12)


def test_sequence_split_is_consistent_with_chunked_calls():
    """Feeding a sequence in two calls with the carried state equals one call (truncated BPTT, ref §4.3)."""
    m = MDNRNN(DOOM_TINY).double()
    z, a = _inputs(DOOM_TINY, 2, 8)
    r = _restarts(3, 8)[:2]
    whole, _ = m(z, a, r)
    first, state = m(z[:, :5], a[:, :5], r[:, :5])
    second, _ = m(z[:, 5:], a[:, 5:], r[:, 5:], state)
    torch.testing.assert_close(torch.cat([first.mu, second.mu], 1), whole.mu, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ M as torch's nn.LSTM, two paths
def _as_nn_lstm(m: MDNRNN) -> torch.nn.LSTM:
    """torch's nn.LSTM holding M's weights: bias_ih = M's one bias, bias_hh = 0 (ref §4.1)."""
    lstm = torch.nn.LSTM(m.input_dim, m.cfg.hidden, batch_first=True).to(m.bias.dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(m.weight_ih)
        lstm.weight_hh_l0.copy_(m.weight_hh)
        lstm.bias_ih_l0.copy_(m.bias)
        lstm.bias_hh_l0.zero_()
    return lstm


@pytest.mark.parametrize("path", ["split", "packed"])
def test_m_is_nn_lstm_with_a_zero_hidden_bias(path):
    """The one-bias LSTM is nn.LSTM with bias_hh = 0: M's weights as they are, the same function; with restarts
    it is nn.LSTM run on each piece between them (a PackedSequence of the pieces)."""
    m = MDNRNN(DOOM_TINY).double()
    m.restart_path = path
    lstm = _as_nn_lstm(m)
    z, a = _inputs(DOOM_TINY, 3, 9)
    x = lambda r: torch.cat([z, a, r.unsqueeze(-1)], -1)  # noqa: E731
    no_restart = torch.zeros(3, 9, dtype=torch.float64)
    out, (h, c) = m(z, a, no_restart)
    hs, (hn, cn) = lstm(x(no_restart))
    torch.testing.assert_close(out.mu, m.head_outputs(hs).mu, rtol=0, atol=1e-12)
    torch.testing.assert_close((h, c), (hn[0], cn[0]), rtol=0, atol=1e-12)

    r = _restarts(3, 9)
    out, (h, c) = m(z, a, r)
    pieces, where = [], []
    for b in range(3):
        cuts = [0] + [t for t in range(1, 9) if r[b, t]] + [9]
        for t0, t1 in zip(cuts[:-1], cuts[1:], strict=True):
            pieces.append(x(r)[b, t0:t1])
            where.append((b, t0, t1))
    packed = torch.nn.utils.rnn.pack_sequence(pieces, enforce_sorted=False)
    hs_packed, (hn, cn) = lstm(packed)
    hs_pieces, _ = torch.nn.utils.rnn.pad_packed_sequence(hs_packed, batch_first=True)
    ref = torch.zeros(3, 9, DOOM_TINY.hidden, dtype=torch.float64)
    for i, (b, t0, t1) in enumerate(where):
        ref[b, t0:t1] = hs_pieces[i, : t1 - t0]
    last = [max(i for i, w in enumerate(where) if w[0] == b) for b in range(3)]
    torch.testing.assert_close(out.mu, m.head_outputs(ref).mu, rtol=0, atol=1e-12)
    torch.testing.assert_close((h, c), (hn[0, last], cn[0, last]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_and_split_paths_give_the_same_outputs_and_gradients(dtype):
    """Restarts at t = 0, mid-sequence, on consecutive steps and on the last step, from a carried state."""
    m = MDNRNN(DOOM_TINY).to(dtype)
    b, t = 4, 13
    z, a = _inputs(DOOM_TINY, b, t, dtype)
    r = torch.zeros(b, t, dtype=dtype)
    r[0, 0] = r[0, 3] = r[0, 7] = r[1, 5] = r[2, 1] = r[2, 2] = r[3, 12] = 1
    init = tuple(torch.randn(b, DOOM_TINY.hidden, dtype=dtype) for _ in range(2))
    results = {}
    for path in ("split", "packed"):
        m.restart_path = path
        m.zero_grad()
        state = tuple(s.clone().requires_grad_(True) for s in init)
        out, (h, c) = m(z, a, r, state)
        loss = mdn_nll(z.roll(-1, 1), out) + out.done_logit.square().mean() + out.reward.mean() + h.sum() + 2 * c.sum()
        loss.backward()
        results[path] = ([out.logpi, out.mu, out.logsigma, out.done_logit, out.reward, h, c],
                         [p.grad.clone() for p in m.parameters()] + [s.grad for s in state])
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for kind in (0, 1):
        for x, y in zip(results["split"][kind], results["packed"][kind], strict=True):
            torch.testing.assert_close(x, y, **tol)


def test_the_path_is_chosen_by_device():
    from worldmodels_cli.models.mdnrnn import auto_restart_path

    assert auto_restart_path(torch.device("cuda")) == "packed"  # one cuDNN call a batch
    assert auto_restart_path(torch.device("cpu")) == "split"  # oneDNN's fused kernel (benchmarks/mdn.py)
    assert "restart_path" not in dict(MDNRNN(DOOM_TINY).state_dict())  # not a weight: artifacts unchanged


# ------------------------------------------------------------------------------------------- losses
def test_nll_equals_torch_mixture_same_family():
    g = torch.Generator().manual_seed(1)
    shape = (3, 4, 6, 5)  # (B, T, Z, K)
    logpi = F.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, -1)
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    logsigma = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    y = torch.randn(shape[:-1], generator=g, dtype=torch.float64) * 2
    out = MDNOutput(logpi, mu, logsigma)
    mix = D.MixtureSameFamily(D.Categorical(logits=logpi), D.Normal(mu, logsigma.exp()))
    expected = -mix.log_prob(y)  # (B, T, Z): one 1-D mixture per dimension (ref §4.1)
    torch.testing.assert_close(mdn_nll(y, out), expected.mean(), rtol=1e-12, atol=1e-12)
    mask = (torch.rand(3, 4, generator=g) > 0.3).double()
    want = (expected * mask[..., None]).sum() / (mask.sum() * shape[2])
    torch.testing.assert_close(mdn_nll(y, out, mask), want, rtol=1e-12, atol=1e-12)


def test_nll_is_stable_for_tiny_sigmas_and_far_targets():
    shape = (2, 3, 4, 5)
    out = MDNOutput(F.log_softmax(torch.zeros(shape), -1), torch.zeros(shape), torch.full(shape, -12.0))
    y = torch.full(shape[:-1], 50.0, requires_grad=True)
    nll = mdn_nll(y, out)
    nll.backward()
    assert torch.isfinite(nll) and torch.isfinite(y.grad).all()


def test_done_bce_weights_positives_ten_times():
    """ref §4.3, §C.2: weight = 1 + 9·target, averaged over all positions (not over the weights)."""
    logit = torch.zeros(4)
    assert done_bce(logit, torch.ones(4)).item() == pytest.approx(10 * math.log(2))
    assert done_bce(logit, torch.zeros(4)).item() == pytest.approx(math.log(2))
    logit = torch.tensor([0.3, -1.2, 2.0, 0.0])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    plain = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    assert done_bce(logit, target).item() == pytest.approx(((1 + 9 * target) * plain).mean().item())
    assert done_bce(logit, target, pos_weight=1.0).item() == pytest.approx(plain.mean().item())


def test_reward_losses():
    pred, r = torch.tensor([0.5, -1.0]), torch.tensor([1.0, -0.1])
    assert reward_loss(pred, r, "regression").item() == pytest.approx(((pred - r) ** 2).mean().item())
    want = F.binary_cross_entropy_with_logits(pred, torch.tensor([1.0, 0.0])).item()
    assert reward_loss(pred, r, "sign").item() == pytest.approx(want)


# ------------------------------------------------------------------------------------------ sampling
KNOWN = ([math.log(0.3), math.log(0.7)], [-2.0, 3.0], [0.5, 1.0])


def _known(n: int) -> MDNOutput:
    lg, mu, sg = (torch.tensor(v, dtype=torch.float64).expand(n, 1, 2) for v in KNOWN)  # (B, Z=1, K=2)
    return MDNOutput(lg, mu, sg.log())


def test_sampling_statistics_at_tau_one():
    z = sample_next(_known(200_000), 1.0, torch.Generator().manual_seed(0))
    assert z.shape == (200_000, 1)
    mean = 0.3 * -2 + 0.7 * 3  # 1.5
    var = 0.3 * (0.25 + 4) + 0.7 * (1 + 9) - mean**2  # 6.025
    assert z.mean().item() == pytest.approx(mean, abs=0.02)
    assert z.var().item() == pytest.approx(var, rel=0.02)


def test_sampling_at_small_tau_sharpens_weights_and_shrinks_variance():
    tau = 0.1
    z = sample_next(_known(100_000), tau, torch.Generator().manual_seed(0))
    # π ∝ π^(1/τ): component 0 keeps (3/7)^10 ≈ 2e-4 of the mass; the variance is σ²·τ
    assert (z < 0).double().mean().item() < 1e-3
    kept = z[z > 0]
    assert kept.mean().item() == pytest.approx(3.0, abs=0.01)
    assert kept.var().item() == pytest.approx(1.0 * tau, rel=0.03)


def test_tau_zero_collapses_to_the_argmax_component_mean():
    out = _known(3)
    assert torch.equal(sample_next(out, 0.0), torch.full((3, 1), 3.0, dtype=torch.float64))
    small = sample_next(out, 1e-6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(small, torch.full((3, 1), 3.0, dtype=torch.float64), rtol=0, atol=1e-2)


def test_temperature_applies_to_the_logits_and_to_sigma_sqrt_tau():
    """ref §4.4, §C.5: π = softmax(logπ/τ) AND σ·√τ (not σ only, not σ·τ)."""
    tau, n = 2.0, 200_000
    out = _known(n)
    zeros = torch.zeros(n, 1, dtype=torch.float64)
    comp0 = (sample_next(out, tau, torch.Generator().manual_seed(0), eps=zeros) == -2.0).double().mean().item()
    want = math.sqrt(0.3) / (math.sqrt(0.3) + math.sqrt(0.7))  # softmax(log π / 2) ≈ 0.396, not 0.3
    assert comp0 == pytest.approx(want, abs=0.005)
    u = torch.tensor([[0.1], [0.9]], dtype=torch.float64)
    eps = torch.ones(2, 1, dtype=torch.float64)
    z = sample_next(_known(2), tau, eps=eps, u=u)
    torch.testing.assert_close(z, torch.tensor([[-2 + 0.5 * math.sqrt(tau)], [3 + 1.0 * math.sqrt(tau)]],
                                               dtype=torch.float64))


def test_inverse_cdf_picks_components_from_u():
    out = MDNOutput(torch.log(torch.tensor([[[0.2, 0.5, 0.3]]])).expand(5, 1, 3),
                    torch.tensor([[[10.0, 20.0, 30.0]]]).expand(5, 1, 3), torch.zeros(5, 1, 3))
    u = torch.tensor([[0.1], [0.25], [0.69], [0.71], [0.9999999]])
    z = sample_next(out, 1.0, eps=torch.zeros(5, 1), u=u)
    assert z.flatten().tolist() == [10.0, 20.0, 20.0, 30.0, 30.0]


def test_components_are_drawn_per_dimension():
    """ref §4.1, §C.4: one component choice per latent dimension, independent across dimensions."""
    n = 100_000
    out = MDNOutput(torch.zeros(n, 2, 2), torch.tensor([-5.0, 5.0]).expand(n, 2, 2), torch.full((n, 2, 2), -3.0))
    z = sample_next(out, 1.0, torch.Generator().manual_seed(3))
    same = ((z[:, 0] > 0) == (z[:, 1] > 0)).double().mean().item()
    assert same == pytest.approx(0.5, abs=0.01)  # a shared choice would give 1.0


def test_sampling_is_reproducible_for_a_generator_and_batched():
    m = MDNRNN(DOOM_TINY)
    out, _ = m.step(*(x[:, 0] for x in _inputs(DOOM_TINY, 4, 1, torch.float32)))
    a = sample_next(out, 1.15, torch.Generator().manual_seed(7))
    b = sample_next(out, 1.15, torch.Generator().manual_seed(7))
    c = sample_next(out, 1.15, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, DOOM_TINY.z_dim)
    g = torch.Generator().manual_seed(7)  # documented order: u then eps from the generator
    u = torch.rand(a.shape, generator=g)
    eps = torch.randn(a.shape, generator=g)
    assert torch.equal(sample_next(out, 1.15, eps=eps, u=u), a)


def test_done_is_a_threshold_independent_of_tau():
    out = MDNOutput(torch.zeros(3, 1, 1), torch.zeros(3, 1, 1), torch.zeros(3, 1, 1),
                    done_logit=torch.tensor([-0.1, 0.0, 0.2]))
    assert is_done(out).tolist() == [False, False, True]
    with pytest.raises(ValueError):
        is_done(MDNOutput(out.logpi, out.mu, out.logsigma))
