"""M's weights laid out for the batched dream step: the same function as `MDNRNN.step`, in one buffer per row."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.controller import FEATURE_PARTS, Controller
from ..models.mdnrnn import MDNRNN
from .streams import NoiseLayout, start_z


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
        self.layout = NoiseLayout(z, a)
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

    def start(self, keys: Tensor, initial_mu: Tensor, initial_logvar: Tensor) -> Tensor:
        """S for rows starting from a random real first frame each (`streams.start_z`)."""
        return self.new_state(start_z(keys, initial_mu, initial_logvar, self.layout)[0])

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

    def step(self, S: Tensor, buf: dict[str, Tensor], u: Tensor | None = None) -> Tensor:
        """Advance every row of S in place: LSTM on (z, a, restart) from (h, c); returns the head Y (B, O). (`u`:
        the RSSM's step takes its choice uniforms here; the mixture's are `sample`'s.)"""
        self.advance(S, buf)
        Y = buf["Y"][: S.shape[0]]
        torch.mm(S[:, self.one_col :], self.Wo, out=Y)  # (B, O)
        return Y

    def advance(self, S: Tensor, buf: dict[str, Tensor]) -> None:
        """`step`'s LSTM alone: the new (c, h) of every row of S in place, no head (the real-env agent needs only
        the memory, `game.agent`)."""
        b, h = S.shape[0], self.hidden
        G, T = buf["G"][:b], buf["T"][:b]
        torch.mm(S[:, h:], self.W, out=G)  # (B, 4H): the one big matmul
        G.sigmoid_()
        i, f, o, sg = G[:, :h], G[:, h : 2 * h], G[:, 2 * h : 3 * h], G[:, 3 * h :]
        c = S[:, self.c_]
        c.mul_(f).addcmul_(i, sg, value=2.0).sub_(i)  # c' = σ(f)·c + σ(i)·tanh(g), tanh(g) = 2σ(2g) − 1
        torch.mul(c, 2.0, out=T).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c')
        torch.mul(T, o, out=S[:, self.h_])  # h' = σ(o)·tanh(c')

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
        """C's layers (P, in, out) for features read straight from S, and the slice of S they read
        (`slice_layers`)."""
        return slice_layers(controller, params, {"z": self.z_, "c": self.c_, "h": self.h_})


def slice_layers(controller: Controller, params: Tensor, parts: dict[str, slice]) -> tuple[list, slice]:
    """C's layers (P, in, out) for features read straight from a state buffer whose columns `parts` hold z, c and
    h, and the slice of the buffer they read.

    The first layer gets one row per column of the slice: C's z, c, h rows where the buffer holds z, c, h, zero
    rows where it holds anything else (so [z, c, h] need not be gathered every step)."""
    layers = controller.unflatten(params)
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
