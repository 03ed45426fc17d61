"""Counter-based random streams for the dream: every rollout's noise from its own seed and step (splitmix64
words, 23-bit uniforms, normals by the inverse CDF), independent of the batch it runs in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models.controller import car_action

# splitmix64 (Steele, Lea & Flood 2014): increment and finaliser constants
_GAMMA = 0x9E3779B97F4A7C15


_KEY_DOMAIN = 0x6A09E667F3BCC909  # keys differ from any stream word made with the same numbers


_BITS = 23  # per uniform: (2k+1)·2^-24 is exact in float32
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK23 = (1 << _BITS) - 1


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
    """Where each draw lies in a rollout's stream: block 0 = start, block t+1 = step t. `groups` = 0 for an
    MDN-RNN (one choice uniform per latent dimension: its mixture component); an RSSM's categorical variables
    (one choice uniform per variable, each step and once more at the start for the first frame's posterior)."""

    z_dim: int
    action_dim: int
    groups: int = 0

    @property
    def choices(self) -> int:
        """Uniforms per step for the discrete choices: Z mixture components, or the RSSM's S variables."""
        return self.groups or self.z_dim

    @property
    def step_uniforms(self) -> int:
        return self.choices + self.z_dim + self.action_dim  # [choice u | ε (Z) | random action (A)]

    @property
    def start_values(self) -> int:
        return 1 + self.z_dim + self.groups  # [episode | ε0 (Z) | the RSSM's first posterior u]

    @property
    def stride(self) -> int:
        """64-bit words per block; each word gives two 23-bit uniforms."""
        return (max(self.step_uniforms, self.start_values) + 1) // 2


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
    z0, idx, _ = start_draws(keys, initial_mu, initial_logvar, layout)
    return z0, idx


def start_draws(keys: Tensor, initial_mu: Tensor, initial_logvar: Tensor, layout: NoiseLayout
                ) -> tuple[Tensor, Tensor, Tensor]:
    """`start_z`'s (z0 (B, Z), i (B,)) and the uniforms (B, groups) of the RSSM's first posterior sample, all from
    block 0 (read once: a block's values depend on how many are read)."""
    z = layout.z_dim
    bits = block_bits(keys, 0, layout.start_values, layout)
    idx = (bits[:, 0] * initial_mu.shape[0]) >> _BITS  # floor(k·E / 2^23): uniform over the E first frames
    eps = to_normal(bits[:, 1 : 1 + z], initial_mu.dtype)
    z0 = initial_mu[idx] + torch.exp(0.5 * initial_logvar[idx]) * eps  # as vae.reparameterize
    return z0, idx, to_uniform(bits[:, 1 + z :], initial_mu.dtype)


def step_noise(keys: Tensor, t: int, layout: NoiseLayout, dtype: torch.dtype, steps: int = 1
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The draws of steps t..t+steps-1: choice uniforms u (B, [steps,] Z or groups), normals ε (B, [steps,] Z) and
    the random policy's action bits (B, [steps,] A) (23-bit ints); the step axis only when steps > 1."""
    z, c = layout.z_dim, layout.choices
    bits = block_bits(keys, t + 1, layout.step_uniforms, layout, steps)
    u = to_uniform(bits[..., :c], dtype)
    eps = to_normal(bits[..., c : c + z], dtype)
    return u, eps, bits[..., c + z :]


def random_action(bits: Tensor, env: str, dtype: torch.dtype) -> Tensor:
    """The dream's random policy from a step's action bits (B, A): Doom a uniform choice of -1 / 0 / 1 each step
    (left / none / right after the env's ±1/3 threshold, the paper's random baseline, ref §B); otherwise tanh
    outputs uniform in [-1, 1] mapped like C's (CarRacing: steer, gas = (a+1)/2, brake = clip(a, 0, 1))."""
    if env == "doom":
        return ((bits * 3) >> _BITS).to(dtype) - 1.0  # floor(3u) - 1
    raw = to_uniform(bits, dtype) * 2.0 - 1.0
    return car_action(raw) if env == "carracing" else raw
