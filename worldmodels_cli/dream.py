"""The dream: M as the environment (ref §7), batched over a whole CMA-ES generation, and `wm dream`.

Semantics (ref §7, §C items 6-7). A rollout starts from the first frame of a random real episode: its stored
(μ, logσ²) give z0 = μ + exp(logσ²/2)·ε; the LSTM state is zero and the restart flag is set at the first step.
Each step: C acts on [z, c, h] (or [z, h], [z]); M steps on (z, a, restart); done when the done logit > 0
(τ never touches done); z' is sampled from M's mixture at temperature τ (ref §4.4). Reward: +1 per step including
the terminal one; with a reward head (CarRacing) the head's value instead: the regression value, or ±1 from the
sign logit (never a survival probability, §C.7). At most `max_steps` steps.

Two implementations of the same thing:

- `reference_rollout`: one rollout at a time, batch 1, through the plain `MDNRNN.step`, `sample_next` and
  `Controller.act`, as the original evaluated a member.
- `dream_rollouts`: one tensor program for P members × R trials at once. Each row carries its own member's
  controller weights (a per-row product, `Controller.forward_batched` with R = 1), its own random stream and its
  own done flag; every `compact_every` steps the finished rows are gathered out, so they stop costing compute.
  M runs as one fused matmul per step, [z, a, restart, 1, h] @ W (B × (In+1+H) × 4H), then one head matmul;
  the rest is a few elementwise ops on the whole batch (see `FusedM`).

Random streams (`block_bits`). Each rollout draws all its noise from a counter-based generator keyed by its own
seed: the 64-bit word j of block b is splitmix64(key + (b·stride + j + 1)·γ), γ the golden-ratio increment, computed
with exact integer tensor ops. Block 0 holds the start (episode index, ε0), block t+1 the noise of step t (Z
uniforms for the mixture component, Z for ε through the inverse normal CDF, A for a random policy's action).
A rollout's noise therefore depends only on (seed, step), never on which other rollouts share the batch or when
they were compacted away, and it costs a dozen integer ops on the batch per step with no per-rollout Python, on
CPU and CUDA alike. Uniforms have 23 bits, u = (2k+1)·2⁻²⁴, exactly representable in float32 and float64, and
strictly inside (0, 1).

Cost. Per step the program is two matmuls (≈ 85-90 % of the time at 1024 rows on CPU) and ≈ 40 elementwise ops on
the whole batch: no per-rollout Python. The noise of `compact_every` steps is hashed at once; compaction runs when
at least 1/32 of the rows have finished; below 64 rows the CPU program drops to one thread (tiny ops gain nothing
from a second one and suffer badly when the core is shared). On CUDA nothing syncs the host except the alive
count every `compact_every` steps. benchmarks/dream.py measures it against the per-member loop and torch.mm.

Exactness. With the same seeds both implementations make the same random draws, and compute the same functions;
in floating point they differ in the last bits (BLAS picks other kernels for other batch sizes, SIMD lanes
versus scalar tails, tanh(x) computed as 2σ(2x) − 1 in the fused step). Those differences could flip a discrete
choice only on a knife edge; tests/test_dream.py runs both in float64, where returns agree rollout by rollout,
with and without compaction.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .models.controller import FEATURE_PARTS, Controller, apply_layers, car_action
from .models.mdnrnn import MDNRNN, is_done, sample_next

log = logging.getLogger(__name__)

# splitmix64 (Steele, Lea & Flood 2014): increment and finaliser constants
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_KEY_DOMAIN = 0x6A09E667F3BCC909  # keys differ from any stream word made with the same numbers
_BITS = 23  # per uniform: (2k+1)·2^-24 is exact in float32
_MASK23 = (1 << _BITS) - 1
_SMALL_BATCH = 64  # below this many rows the CPU program runs on one thread


# ------------------------------------------------------------------------------------------ random streams
def _i64(x: int) -> int:
    """A Python int wrapped to a signed 64-bit value (torch int64 arithmetic wraps the same way)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _lsr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiplication), in place on x; returns x."""
    tmp = torch.empty_like(x)
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(x, shift, out=tmp).bitwise_and_((1 << (64 - shift)) - 1)  # logical shift
        x.bitwise_xor_(tmp)
        if mult is not None:
            x.mul_(_i64(mult))
    return x


def rollout_keys(seeds, device=None) -> Tensor:
    """One 64-bit stream key (N,) int64 per rollout seed."""
    s = torch.as_tensor(np.asarray(seeds, dtype=np.int64).reshape(-1), device=device)
    return _mix64(s * _i64(_GAMMA) + _i64(_KEY_DOMAIN))


@dataclass(frozen=True)
class NoiseLayout:
    """Where each draw lies in a rollout's stream: block 0 = start, block t+1 = step t."""

    z_dim: int
    action_dim: int

    @property
    def step_uniforms(self) -> int:
        return 2 * self.z_dim + self.action_dim  # [component u (Z) | ε (Z) | random action (A)]

    @property
    def stride(self) -> int:
        """64-bit words per block; each word gives two 23-bit uniforms."""
        return (max(self.step_uniforms, 1 + self.z_dim) + 1) // 2


def block_bits(keys: Tensor, block: int, n: int, layout: NoiseLayout, count: int = 1) -> Tensor:
    """The first n 23-bit integers of blocks block..block+count-1 of each rollout's stream: (B, n) int64, or
    (B, count, n) when count > 1. A block's integers are the top 23 bits of its words 0..W-1, then bits 9..31 of
    the same words."""
    words = (n + 1) // 2
    first = torch.arange(block, block + count, device=keys.device, dtype=torch.int64) * layout.stride + 1
    ctr = (first.unsqueeze(1) + torch.arange(words, device=keys.device, dtype=torch.int64)) * _i64(_GAMMA)
    w = _mix64(keys.view(-1, 1, 1) + ctr)  # (B, count, words)
    bits = torch.empty(keys.shape[0], count, 2, words, dtype=torch.int64, device=keys.device)
    torch.bitwise_right_shift(w, 64 - _BITS, out=bits[:, :, 0]).bitwise_and_(_MASK23)
    torch.bitwise_right_shift(w, 9, out=bits[:, :, 1]).bitwise_and_(_MASK23)
    bits = bits.view(keys.shape[0], count, 2 * words)[..., :n]
    return bits[:, 0] if count == 1 else bits


def to_uniform(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """23-bit integers -> u = (2k+1)·2^-24 in (0, 1), exact in float32 and float64."""
    return bits.to(dtype).mul_(2.0**-_BITS).add_(2.0 ** -(_BITS + 1))


def to_normal(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """23-bit integers -> ε = Φ⁻¹(u) = √2·erfinv(2u − 1), u as `to_uniform`. 2u − 1 = (2k + 1 − 2²³)·2⁻²³ is exact,
    so no precision is lost near the tails (|ε| < 5.4); erfinv is an elementwise scalar kernel on CPU: the same
    bits give the same ε wherever the row sits in the batch, and it is several times faster than ndtri."""
    v = bits.to(dtype).mul_(2.0 ** (1 - _BITS)).add_(2.0**-_BITS - 1.0)
    return v.erfinv_().mul_(math.sqrt(2.0))


def start_z(keys: Tensor, initial_mu: Tensor, initial_logvar: Tensor, layout: NoiseLayout) -> tuple[Tensor, Tensor]:
    """Dream starts (ref §7 reset): per rollout a uniformly chosen real first frame i and z0 = μ_i + exp(logσ²_i/2)·ε.
    initial_mu/logvar (E, Z) -> (z0 (B, Z), i (B,))."""
    bits = block_bits(keys, 0, 1 + layout.z_dim, layout)
    idx = (bits[:, 0] * initial_mu.shape[0]) >> _BITS  # floor(k·E / 2^23): uniform over the E first frames
    eps = to_normal(bits[:, 1:], initial_mu.dtype)
    return initial_mu[idx] + torch.exp(0.5 * initial_logvar[idx]) * eps, idx  # as vae.reparameterize


def step_noise(keys: Tensor, t: int, layout: NoiseLayout, dtype: torch.dtype, steps: int = 1
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The draws of steps t..t+steps-1: component uniforms u (B, [steps,] Z), normals ε (B, [steps,] Z) and the
    random policy's action bits (B, [steps,] A) (23-bit ints); the step axis only when steps > 1."""
    z = layout.z_dim
    bits = block_bits(keys, t + 1, layout.step_uniforms, layout, steps)
    u = to_uniform(bits[..., :z], dtype)
    eps = to_normal(bits[..., z : 2 * z], dtype)
    return u, eps, bits[..., 2 * z :]


def random_action(bits: Tensor, env: str, dtype: torch.dtype) -> Tensor:
    """The dream's random policy from a step's action bits (B, A): Doom a uniform choice of -1 / 0 / 1 each step
    (left / none / right after the env's ±1/3 threshold, the paper's random baseline, ref §B); otherwise tanh
    outputs uniform in [-1, 1] mapped like C's (CarRacing: steer, gas = (a+1)/2, brake = clip(a, 0, 1))."""
    if env == "doom":
        return ((bits * 3) >> _BITS).to(dtype) - 1.0  # floor(3u) - 1
    raw = to_uniform(bits, dtype) * 2.0 - 1.0
    return car_action(raw) if env == "carracing" else raw


def reward_of(kind: str, value: Tensor | None, like: Tensor) -> Tensor:
    """Per-step dream reward: +1 without a reward head (ref §7); the regression head's value; or ±1 from the
    sign head's logit (a sign, never a survival probability: ref §C.7)."""
    if kind == "none" or value is None:
        return torch.ones_like(like)
    if kind == "regression":
        return value
    return torch.where(value > 0, 1.0, -1.0).to(like.dtype)


# ------------------------------------------------------------------------------------------ the fused M
class FusedM:
    """M's weights rearranged for the batched dream, read from an `MDNRNN` (same function, other layout).

    Each row's state lives in one buffer S (B, H + Z + A [+1] + 1 + H) = [c | z | a | restart | 1 | h]:
    S[:, H:] = [z, a, r, 1, h] is the LSTM's whole input and S[:, one:] = [1, h] the head's, so each is ONE
    bias-free matmul per step: [z, a, r, 1, h] @ W (In+1+H, 4H) for all gates, [1, h] @ Wo (1+H, O) for the head
    (the biases are the rows that meet the constant-1 column). Gate columns are reordered to (i, f, o, g) with g's
    scaled by 2, so one in-place sigmoid serves all four: tanh(g) = 2σ(2g) − 1 (tanh is several times slower than
    sigmoid on CPU). The head's columns are reordered to [done?, reward?, logits (K, Z), μ (K, Z), logσ (K, Z)] so
    the mixture math works on K contiguous (B, Z) slices, and for τ > 0 the logits' columns are divided by τ
    (softmax(logπ/τ) = softmax(logits/τ): log_softmax only shifts a row). The forget bias (+1, ref §4.1) is
    already in M's bias."""

    # All of M that this layout reads. A parameter or config field `MDNRNN` gains (a second LSTM layer, a layer
    # norm) fails tests/test_dream.py::test_the_fused_m_reads_all_of_m, naming it, until the fused step uses it.
    PARAMETERS = frozenset({"weight_ih", "weight_hh", "bias", "head.weight", "head.bias"})
    CONFIG_FIELDS = frozenset({"z_dim", "action_dim", "hidden", "mixtures", "done_head", "restart_input",
                               "reward_head"})

    def __init__(self, mdn: MDNRNN, dtype: torch.dtype, device: torch.device | str, tau: float = 1.0) -> None:
        cfg = mdn.cfg
        z, a, h, k = cfg.z_dim, cfg.action_dim, cfg.hidden, cfg.mixtures
        self.z_dim, self.action_dim, self.hidden, self.mixtures, self.tau = z, a, h, k, tau
        self.restart = cfg.restart_input
        self.done_head = cfg.done_head
        self.reward_head = cfg.reward_head
        r = 1 if self.restart else 0
        self.one_col = h + z + a + r
        self.width = self.one_col + 1 + h
        self.c_, self.z_, self.a_ = slice(0, h), slice(h, h + z), slice(h + z, h + z + a)
        self.r_col = h + z + a
        self.h_ = slice(self.one_col + 1, self.width)
        with torch.no_grad():
            gates = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
            scale = torch.ones(4 * h, dtype=torch.float64)
            scale[3 * h :] = 2.0  # tanh(g) = 2σ(2g) − 1
            def f64(t: Tensor) -> Tensor:  # built on the CPU in float64 whatever M's device, then moved to `device`
                return t.detach().cpu().double()

            w_ih = f64(mdn.weight_ih)[gates] * scale[:, None]  # (4H, In) rows (i, f, o, 2g)
            w_hh = f64(mdn.weight_hh)[gates] * scale[:, None]  # (4H, H)
            bias = f64(mdn.bias)[gates] * scale  # (4H,)
            # rows in S[:, H:] order: z, a, r (= M's input order), 1 (bias), h
            self.W = torch.cat([w_ih.T, bias[None, :], w_hh.T], 0).to(device, dtype).contiguous()  # (In+1+H, 4H)
            cols = []
            if cfg.done_head:
                cols.append(torch.tensor([0]))
            off = 1 if cfg.done_head else 0
            if cfg.reward_head != "none":
                cols.append(torch.tensor([off + mdn.mdn_dim]))
            d, kk = torch.meshgrid(torch.arange(z), torch.arange(k), indexing="ij")
            for part in range(3):  # head layout: Z rows of [logπ(K), μ(K), logσ(K)]
                cols.append((off + d * 3 * k + part * k + kk).T.reshape(-1))  # (K, Z) order
            perm = torch.cat(cols)
            wo = torch.cat([f64(mdn.head.bias)[None, :], f64(mdn.head.weight).T], 0)
            wo = wo[:, perm]  # (1+H, O): rows [1, h]
            self.mix0 = (1 if cfg.done_head else 0) + (1 if cfg.reward_head != "none" else 0)
            if tau > 0:
                wo[:, self.mix0 : self.mix0 + k * z] /= tau
            pad = -wo.shape[1] % 16  # zero columns up to a multiple of 16: BLAS runs no ragged edge (≈5 % faster)
            wo = torch.cat([wo, wo.new_zeros(wo.shape[0], pad)], 1)
            self.Wo = wo.to(device, dtype).contiguous()
        self.out_dim = self.Wo.shape[1]

    def new_state(self, z0: Tensor) -> Tensor:
        """S for rows starting at z0 (B, Z): zero LSTM state, restart flag set (ref §7)."""
        S = torch.zeros(z0.shape[0], self.width, dtype=self.W.dtype, device=self.W.device)
        S[:, self.z_] = z0
        S[:, self.one_col] = 1.0
        if self.restart:
            S[:, self.r_col] = 1.0
        return S

    def buffers(self, batch: int) -> dict[str, Tensor]:
        """Scratch tensors for up to `batch` rows (the program uses their first B rows)."""
        h, z, k = self.hidden, self.z_dim, self.mixtures
        dt, dev = self.W.dtype, self.W.device
        return {"G": torch.empty(batch, 4 * h, dtype=dt, device=dev),
                "T": torch.empty(batch, h, dtype=dt, device=dev),
                "Y": torch.empty(batch, self.out_dim, dtype=dt, device=dev),
                "E": torch.empty(batch, k, z, dtype=dt, device=dev)}

    def step(self, S: Tensor, buf: dict[str, Tensor]) -> Tensor:
        """Advance every row of S in place: LSTM on (z, a, restart) from (h, c); returns the head Y (B, O)."""
        b, h = S.shape[0], self.hidden
        G, T, Y = buf["G"][:b], buf["T"][:b], buf["Y"][:b]
        torch.mm(S[:, h:], self.W, out=G)  # (B, 4H): the one big matmul
        G.sigmoid_()
        i, f, o, sg = G[:, :h], G[:, h : 2 * h], G[:, 2 * h : 3 * h], G[:, 3 * h :]
        c = S[:, self.c_]
        c.mul_(f).addcmul_(i, sg, value=2.0).sub_(i)  # c' = σ(f)·c + σ(i)·tanh(g), tanh(g) = 2σ(2g) − 1
        torch.mul(c, 2.0, out=T).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c')
        torch.mul(T, o, out=S[:, self.h_])  # h' = σ(o)·tanh(c')
        torch.mm(S[:, self.one_col :], self.Wo, out=Y)  # (B, O)
        return Y

    def sample(self, Y: Tensor, u: Tensor, eps: Tensor, out: Tensor, buf: dict[str, Tensor]) -> None:
        """z' (B, Z) into `out` from the head Y: per dimension, component by inverse CDF of softmax(logits/τ) at u,
        then μ_k + exp(logσ_k)·√τ·ε (ref §4.4, the same rule as `mdnrnn.sample_next`)."""
        b, z, k, m0 = Y.shape[0], self.z_dim, self.mixtures, self.mix0
        logits = Y[:, m0 : m0 + k * z].view(b, k, z)  # (B, K, Z), already divided by τ
        mu = Y[:, m0 + k * z : m0 + 2 * k * z].view(b, k, z)
        logsigma = Y[:, m0 + 2 * k * z : m0 + 3 * k * z].view(b, k, z)
        if self.tau <= 0:
            idx = logits.argmax(dim=1, keepdim=True)  # (B, 1, Z)
            out.copy_(mu.gather(1, idx).squeeze(1))
            return
        E = buf["E"][:b]
        torch.sub(logits, logits.amax(dim=1, keepdim=True), out=E).exp_()  # unnormalised mixture weights
        for j in range(1, k):
            E[:, j].add_(E[:, j - 1])  # running sums
        thr = (u * E[:, k - 1]).unsqueeze(1)  # (B, 1, Z): u·total
        idx = (E[:, : k - 1] <= thr).sum(dim=1, keepdim=True)  # (B, 1, Z): #{j : cdf_j <= u}
        sigma = logsigma.gather(1, idx).squeeze(1).exp_()
        torch.addcmul(mu.gather(1, idx).squeeze(1), sigma, eps, value=math.sqrt(self.tau), out=out)

    def row_layers(self, controller: Controller, params: Tensor) -> tuple[list, slice]:
        """C's layers (P, in, out) for features read straight from S, and the slice of S they read.

        The first layer gets one row per column of the slice: C's z, c, h rows where S holds z, c, h, zero rows
        where S holds a, restart and the constant 1 (so [z, c, h] need not be gathered every step)."""
        layers = controller.unflatten(params)
        parts = {"z": self.z_, "c": self.c_, "h": self.h_}
        used = [parts[p] for p in FEATURE_PARTS[controller.cfg.features]]
        lo, hi = min(sl.start for sl in used), max(sl.stop for sl in used)
        w0, b0 = layers[0]
        wide = torch.zeros(w0.shape[0], hi - lo, w0.shape[2], dtype=w0.dtype, device=w0.device)
        row = 0
        for sl in used:  # C's rows in feature order [z, c, h]
            n = sl.stop - sl.start
            wide[:, sl.start - lo : sl.stop - lo] = w0[:, row : row + n]
            row += n
        layers[0] = (wide, b0)
        return layers, slice(lo, hi)


# ------------------------------------------------------------------------------------------ the batched program
@dataclass
class DreamResult:
    """Per rollout (P, R): returns (float64) and lengths (steps); figures of the run."""

    returns: np.ndarray
    lengths: np.ndarray
    seconds: float
    row_steps: int  # rows stepped in total (what was computed, finished-but-not-yet-compacted rows included)
    z: np.ndarray | None = field(default=None, repr=False)  # (P, R, max_steps+1, Z) with NaN after the end

    @property
    def rollout_steps(self) -> int:
        return int(self.lengths.sum())


def _policy_env(controller: Controller | None, mdn: MDNRNN, env: str | None) -> str:
    if controller is not None:
        return controller.env
    if env:
        return env
    return "doom" if mdn.cfg.action_dim == 1 else "carracing"


@torch.no_grad()
def dream_rollouts(
    mdn: MDNRNN,
    seeds,
    initial_mu,
    initial_logvar,
    *,
    controller: Controller | None = None,
    params=None,
    env: str | None = None,
    tau: float = 1.15,
    max_steps: int = 2100,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    compact: bool = True,
    compact_every: int = 8,
    record_z: bool = False,
) -> DreamResult:
    """P members × R trials of the dream at once -> DreamResult with (P, R) returns and lengths.

    seeds (P, R) ints, one stream per rollout; controller + params (P, n) give member p's weights to its R rows
    (without a controller: the random policy of `random_action` for `env`). initial_mu/logvar (E, Z): the first
    frames of real episodes. `compact` gathers the unfinished rows every `compact_every` steps; record_z keeps every
    z (tests, `wm dream`). Runs on `device` (default M's) in `dtype` (default M's)."""
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 2:
        raise ValueError(f"seeds must be (P, R), got shape {seeds.shape}")
    P, R = seeds.shape
    n_rows = P * R
    device = torch.device(device) if device is not None else mdn.bias.device
    dtype = dtype or mdn.bias.dtype
    fm = FusedM(mdn, dtype, device, tau)
    layout = NoiseLayout(fm.z_dim, fm.action_dim)
    env_name = _policy_env(controller, mdn, env)
    t_start = time.perf_counter()

    keys = rollout_keys(seeds, device)  # (N,)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    S = fm.new_state(start_z(keys, mu0, lv0, layout)[0])  # zero state, restart flag set (ref §7)
    feats = layers = None
    if controller is not None:
        p = torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params, device=device)
        member_layers, feats = fm.row_layers(controller, p.to(dtype).reshape(P, controller.param_count))
        # row r runs member r // R: its weights repeated per row, so rows can be compacted freely
        layers = [(w.repeat_interleave(R, 0), None if b is None else b.repeat_interleave(R, 0))
                  for w, b in member_layers]
    buf = fm.buffers(n_rows)
    rows = torch.arange(n_rows, device=device)  # each row's rollout id
    alive = torch.ones(n_rows, dtype=torch.bool, device=device)
    ret = torch.zeros(n_rows, dtype=torch.float64, device=device)
    length = torch.zeros(n_rows, dtype=torch.int64, device=device)
    out_ret = torch.zeros(n_rows, dtype=torch.float64, device=device)
    out_len = torch.zeros(n_rows, dtype=torch.int64, device=device)
    zs = None
    if record_z:
        zs = torch.full((max_steps + 1, n_rows, fm.z_dim), math.nan, dtype=dtype, device=device)
        zs[0] = S[:, fm.z_]
    row_steps = 0

    per_step_reward = fm.reward_head != "none"  # else +1 per step: the return is the length (ref §7)
    threads = torch.get_num_threads()
    try:
        for t in range(max_steps):
            B = S.shape[0]
            row_steps += B
            if B < _SMALL_BATCH and device.type == "cpu":
                torch.set_num_threads(1)  # a few rows: splitting tiny ops only adds synchronisation
            j = t % compact_every
            if j == 0:  # the noise of the next `compact_every` steps at once: rows only change between such chunks
                k = min(compact_every, max_steps - t)
                U, EPS, AB = (x.view(B, k, -1) for x in step_noise(keys, t, layout, dtype, steps=k))  # (B, k, ·)
            if layers is None:
                S[:, fm.a_] = random_action(AB[:, j], env_name, dtype)
            else:
                raw = apply_layers(layers, S[:, feats].unsqueeze(1))  # (B, 1, A): member weights per row
                S[:, fm.a_] = controller.to_action(raw.squeeze(1))
            Y = fm.step(S, buf)
            if t == 0 and fm.restart:
                S[:, fm.r_col] = 0.0
            if per_step_reward:
                ret.add_(reward_of(fm.reward_head, Y[:, 1 if fm.done_head else 0], ret).to(torch.float64) * alive)
            length.add_(alive)
            if fm.done_head:
                alive &= ~(Y[:, 0] > 0)  # done when the done logit > 0; τ plays no part (ref §7)
            fm.sample(Y, U[:, j], EPS[:, j], S[:, fm.z_], buf)
            if zs is not None:
                zs[t + 1, rows[alive]] = S[alive][:, fm.z_]
            if j == compact_every - 1 and t + 1 < max_steps:
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                if compact and B - n_alive >= max(1, B // 32):
                    done_rows = (~alive).nonzero().squeeze(1)
                    out_ret[rows[done_rows]] = ret[done_rows]
                    out_len[rows[done_rows]] = length[done_rows]
                    keep = alive.nonzero().squeeze(1)
                    S, keys, rows, ret, length = S[keep], keys[keep], rows[keep], ret[keep], length[keep]
                    alive = alive[keep]
                    if layers is not None:
                        layers = [(w[keep], None if b is None else b[keep]) for w, b in layers]
    finally:
        torch.set_num_threads(threads)
    out_ret[rows] = ret
    out_len[rows] = length
    if not per_step_reward:
        out_ret = out_len.to(torch.float64)
    seconds = time.perf_counter() - t_start
    log.debug("dream: %d rollouts, %d rollout-steps (%d rows stepped) in %.2f s", n_rows, int(out_len.sum()),
              row_steps, seconds)
    return DreamResult(
        returns=out_ret.cpu().numpy().reshape(P, R),
        lengths=out_len.cpu().numpy().reshape(P, R),
        seconds=seconds,
        row_steps=row_steps,
        z=None if zs is None else zs.permute(1, 0, 2).reshape(P, R, max_steps + 1, fm.z_dim).cpu().numpy(),
    )


def dream_fitness(mdn: MDNRNN, controller: Controller, params, seeds, initial_mu, initial_logvar, *,
                  tau: float, max_steps: int, device=None) -> np.ndarray:
    """Fitness of each member (P,): the mean dream return over its R trials (ref §6)."""
    res = dream_rollouts(mdn, seeds, initial_mu, initial_logvar, controller=controller, params=params, tau=tau,
                         max_steps=max_steps, device=device)
    return res.returns.mean(axis=1)


class DreamFitness:
    """`evolve.Fitness` in the dream: (params (P, n), seeds (P, R)) -> returns (P, R), one batched program per call."""

    def __init__(self, mdn: MDNRNN, controller: Controller, initial_mu, initial_logvar, *, tau: float,
                 max_steps: int, device=None) -> None:
        self.mdn, self.controller = mdn, controller
        self.initial_mu, self.initial_logvar = initial_mu, initial_logvar
        self.tau, self.max_steps, self.device = tau, max_steps, device
        self.last: DreamResult | None = None

    @classmethod
    def from_artifact(cls, mdn_path: str | os.PathLike, controller: Controller, *, tau: float, max_steps: int,
                      device: str = "cpu") -> DreamFitness:
        from .models.mdnrnn import load_initial_z, load_mdn

        mdn, _ = load_mdn(mdn_path, device)
        mu, logvar = load_initial_z(mdn_path)
        return cls(mdn, controller, mu, logvar, tau=tau, max_steps=max_steps, device=device)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        self.last = dream_rollouts(self.mdn, seeds, self.initial_mu, self.initial_logvar, controller=self.controller,
                                   params=np.asarray(params), tau=self.tau, max_steps=self.max_steps,
                                   device=self.device)
        return self.last.returns

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ the plain loop
@torch.no_grad()
def reference_rollout(
    mdn: MDNRNN,
    seed: int,
    initial_mu,
    initial_logvar,
    *,
    controller: Controller | None = None,
    params=None,
    env: str | None = None,
    tau: float = 1.15,
    max_steps: int = 2100,
    record_z: bool = False,
) -> tuple[float, int, np.ndarray | None]:
    """One dream rollout, batch 1, as the original's DoomCoverRNNEnv + Model.get_action (ref §7):
    -> (return, length, z (length+1, Z) if record_z, i.e. z0 and every z the dream produced before the end)."""
    cfg = mdn.cfg
    dtype, device = mdn.bias.dtype, mdn.bias.device
    layout = NoiseLayout(cfg.z_dim, cfg.action_dim)
    env_name = _policy_env(controller, mdn, env)
    keys = rollout_keys([seed], device)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    z, _ = start_z(keys, mu0, lv0, layout)  # (1, Z)
    h, c = mdn.initial_state(1, device)  # zero state
    restart = torch.ones(1, dtype=dtype, device=device)  # restart flag at the first step
    if controller is not None:
        controller = copy.deepcopy(controller).to(device=device, dtype=dtype)
        controller.set_params(torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params))
    total, steps = 0.0, 0
    zs = [z[0].clone()] if record_z else None
    for t in range(max_steps):
        u, eps, abits = step_noise(keys, t, layout, dtype)
        if controller is None:
            a = random_action(abits, env_name, dtype)
        else:
            a = controller.act(controller.features(z, h, c))
        out, (h, c) = mdn.step(z, a, restart, (h, c))
        restart = torch.zeros_like(restart)
        total += float(reward_of(cfg.reward_head, out.reward, restart)[0])
        steps += 1
        if out.done_logit is not None and bool(out.done_logit[0] > 0):
            break
        z = sample_next(out, tau, eps=eps, u=u)
        if zs is not None:
            zs.append(z[0].clone())
    return total, steps, None if zs is None else torch.stack(zs).cpu().numpy()


# ------------------------------------------------------------------------------------------ diagnostics
def random_policy_done_rate(mdn: MDNRNN, initial_mu, initial_logvar, *, env: str | None = None, episodes: int = 64,
                            tau: float = 1.0, max_steps: int = 2100, seed: int = 0) -> dict:
    """How the dream ends under the random policy: mean ± std length, the fraction of episodes M ends by its
    done head before the cap, and done events per step. A dream that never ends (rate 0) or ends at once is a
    broken M. Shown by `wm info` on an mdn artifact."""
    from . import seeding

    seeds = np.array([[seeding.derive(seed, "done-rate", i) for i in range(episodes)]], dtype=np.int64)
    res = dream_rollouts(mdn, seeds, initial_mu, initial_logvar, env=env, tau=tau, max_steps=max_steps)
    lengths = res.lengths.reshape(-1).astype(np.float64)
    ended = (lengths < max_steps) if mdn.cfg.done_head else np.zeros_like(lengths, dtype=bool)
    return {"episodes": episodes, "temperature": tau, "max_steps": max_steps,
            "mean_length": float(lengths.mean()), "std_length": float(lengths.std()),
            "mean_return": float(res.returns.mean()),
            "done_fraction": float(ended.mean()), "done_per_step": float(ended.sum() / lengths.sum())}


@torch.no_grad()
def constant_action_lengths(mdn: MDNRNN, initial_mu, initial_logvar, actions: dict[str, float], *,
                            episodes: int = 64, tau: float = 1.15, max_steps: int = 2100, seed: int = 0) -> dict:
    """Mean dream length when one action is held the whole episode (Doom: always left / none / right).

    The diagnostic of the dream exploit (ref §B): in the real game holding a direction dies at a wall in ≈150-190
    steps; an M that lets it survive far longer in the dream has not seen those deaths, and CMA-ES will find it."""
    gen = torch.Generator().manual_seed(seed)
    mu0, lv0 = torch.as_tensor(initial_mu, dtype=torch.float32), torch.as_tensor(initial_logvar, dtype=torch.float32)
    out = {}
    for name, value in actions.items():
        idx = torch.randint(len(mu0), (episodes,), generator=gen)
        z = mu0[idx] + torch.exp(0.5 * lv0[idx]) * torch.randn(mu0[idx].shape, generator=gen)  # (B, Z)
        a = torch.full((episodes, mdn.cfg.action_dim), float(value))
        state, alive = mdn.initial_state(episodes), torch.ones(episodes, dtype=torch.bool)
        restart, length = torch.ones(episodes), torch.zeros(episodes)
        for _ in range(max_steps):
            step, state = mdn.step(z, a, restart if mdn.cfg.restart_input else None, state)
            length += alive.float()
            if step.done_logit is not None:
                alive &= ~is_done(step)
            if not alive.any():
                break
            restart = torch.zeros(episodes)
            z = sample_next(step, tau, gen)
        out[name] = f"{length.mean():.0f} ± {length.std():.0f}"
    return out


# ------------------------------------------------------------------------------------------ wm dream
@dataclass
class DreamRunResult:
    out: Path
    episodes: int
    lengths: list[int]
    returns: list[float]
    frames: int

    def line(self) -> str:
        mean = float(np.mean(self.returns))
        return (f"{self.out}: {self.episodes} dream episode(s), {self.frames} frames, lengths {self.lengths}, "
                f"mean return {mean:.1f}")


def run(cfg, vae_path, mdn_path, out, *, controller_path=None, seed: int = 0, device: str = "auto") -> DreamRunResult:
    """`wm dream`: dream `cfg.episodes` rollouts (the controller's, else the random policy) at `cfg.temperature`,
    decode every z through V's decoder, and write them side by side as an animated GIF."""
    from . import seeding
    from .artifacts import check_writable
    from .device import resolve
    from .errors import ArtifactError
    from .models.controller import load_controller
    from .models.mdnrnn import load_initial_z, load_mdn
    from .models.vae import load_vae
    from .video import check_video_path, write_video

    dev = resolve(device)
    check_video_path(out)
    out = Path(out)
    check_writable(out)
    mdn, mdn_meta = load_mdn(mdn_path, dev)
    mu0, lv0 = load_initial_z(mdn_path)
    vae, vae_meta = load_vae(vae_path, dev)
    if vae_meta.env != mdn_meta.env:
        raise ArtifactError(f"{vae_path}: a {vae_meta.env} V, but {mdn_path} is a {mdn_meta.env} M")
    if vae.config.z_dim != mdn.cfg.z_dim:
        raise ArtifactError(f"{vae_path}: V's latent size {vae.config.z_dim} differs from M's {mdn.cfg.z_dim} "
                            f"({mdn_path}); use the V that M's series was encoded with")
    controller = params = None
    if controller_path is not None:
        controller, params, c_meta = load_controller(controller_path)
        if c_meta.env != mdn_meta.env:
            raise ArtifactError(f"{controller_path}: a {c_meta.env} controller, but {mdn_path} is a {mdn_meta.env} M")
        want = (mdn.cfg.z_dim, mdn.cfg.hidden, mdn.cfg.action_dim)
        if (controller.z_dim, controller.hidden, controller.action_dim) != want:
            raise ArtifactError(f"{controller_path}: controller sizes (z {controller.z_dim}, h {controller.hidden}, "
                                f"a {controller.action_dim}) do not match M's {want} ({mdn_path})")
        params = params[None, :]
    seeds = np.array([[seeding.derive(seed, "dream", i) for i in range(cfg.episodes)]], dtype=np.int64)
    res = dream_rollouts(mdn, seeds, mu0, lv0, controller=controller, params=params, env=mdn_meta.env or None,
                         tau=cfg.temperature, max_steps=cfg.max_steps, compact=False, record_z=True)
    lengths = res.lengths[0].tolist()
    frames = _decode_episodes(vae, res.z[0], lengths, dev)
    write_video(out, frames, fps=cfg.fps)
    return DreamRunResult(out, cfg.episodes, lengths, res.returns[0].tolist(), len(frames))


@torch.no_grad()
def _decode_episodes(vae, z: np.ndarray, lengths: list[int], device: str, batch: int = 256) -> list[np.ndarray]:
    """z (N, T+1, Z) -> GIF frames (H, W·N, 3) uint8: episodes side by side, each holding its last picture after
    its end (a 2-pixel gap between them)."""
    n, t_max = z.shape[0], max(lengths)  # episode i shows z0..z_{len-1}: the frames it saw before acting
    tiles = []
    for i in range(n):
        zi = torch.as_tensor(z[i, : lengths[i]], dtype=torch.float32, device=device)
        pics = torch.cat([vae.decode(zi[j : j + batch]) for j in range(0, len(zi), batch)])  # (L, 3, 64, 64)
        tiles.append((pics.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    gap = np.zeros((64, 2, 3), dtype=np.uint8)
    frames = []
    for t in range(t_max):
        row = []
        for i, tile in enumerate(tiles):
            if i:
                row.append(gap)
            row.append(tile[min(t, len(tile) - 1)])
        frames.append(np.concatenate(row, axis=1))
    return frames


def mdn_dream_summary(path: str | os.PathLike, meta) -> dict | str:
    """`wm info` on an mdn artifact: `random_policy_done_rate` at the temperature and cap its preset records
    (default τ 1.15, 2100 steps); a one-line reason instead when the artifact cannot dream."""
    from .errors import WorldModelsError
    from .models.mdnrnn import load_initial_z, load_mdn

    evolve = meta.config.get("evolve", {}) if isinstance(meta.config, dict) else {}
    tau, cap = float(evolve.get("temperature", 1.15)), int(evolve.get("max_steps", 2100))
    try:
        mdn, _ = load_mdn(path, "cpu", allow_incomplete=True)
        mu0, lv0 = load_initial_z(path)
    except WorldModelsError as exc:
        return f"n/a ({exc})"
    r = random_policy_done_rate(mdn, mu0, lv0, env=meta.env or None, tau=tau, max_steps=cap)
    r = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
    if meta.env == "doom" and mdn.cfg.done_head:
        r["held_action_length"] = constant_action_lengths(mdn, mu0, lv0, {"left": -1.0, "none": 0.0, "right": 1.0},
                                                          episodes=32, tau=tau, max_steps=cap)
    return r
