"""M: the MDN-RNN (ref §4). A plain one-layer LSTM and a linear head to one independent K-component 1-D Gaussian
mixture per latent dimension; for Doom also a done logit and a restart-flag input that resets the LSTM state at
episode starts; optionally a reward head.

Shapes: B batch, T time, Z latent, A action, H hidden, K mixtures.

The LSTM is the reference's `LayerNormBasicLSTMCell(layer_norm=False)` (ref §4.1): one kernel over [x, h] and ONE
bias of 4H (torch's nn.LSTM would have two), no peepholes. Parameters are stored in torch's layout (gate order
i, f, g, o; `weight_ih` (4H, In), `weight_hh` (4H, H), `bias` (4H)) so the fused ATen LSTM kernel (cuDNN on CUDA)
runs them; the reference's constant forget_bias = 1.0 is folded into `bias` (initialised to 1 on the f block).
It is torch's nn.LSTM with bias_ih = `bias` and bias_hh = 0, the same function (tests/test_mdnrnn.py).
A restart inside a sequence cannot be given to that kernel; `restart_path` says how a batch with restarts runs:
'split' (one call per restart time) or 'packed' (each stream cut at its restarts, all pieces one variable-length
call: one cuDNN call per batch); 'auto' takes the faster on the device (`auto_restart_path`). Same weights, same
function, either way.
Parameter count = 4H·(In + H + 1) + H·O + O, with In = Z + A (+1 restart), O = Z·K·3 (+1 done) (+1 reward):
422,368 for CarRacing (Z 32, A 3, H 256) and 1,678,785 for Doom (Z 64, A 1, H 512, restart, done) (ref §4.2/§4.3).

Head columns: [done logit (Doom, column 0 as the reference)] + Z rows of [logπ(K), μ(K), logσ(K)] + [reward].
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MDNConfig

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class MDNOutput:
    """Per-dimension mixture parameters and the optional heads. Step outputs lack the T dimension."""

    logpi: Tensor  # (B, T, Z, K) log-softmax normalised over K
    mu: Tensor  # (B, T, Z, K)
    logsigma: Tensor  # (B, T, Z, K)
    done_logit: Tensor | None = None  # (B, T) when cfg.done_head
    reward: Tensor | None = None  # (B, T) regression value or sign logit when cfg.reward_head != 'none'


class MDNRNN(nn.Module):
    """The world model M: (z_t, a_t[, restart_t]) -> mixture over z_{t+1} (+ done, reward)."""

    def __init__(self, cfg: MDNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        z, a, h, k = cfg.z_dim, cfg.action_dim, cfg.hidden, cfg.mixtures
        self.input_dim = z + a + (1 if cfg.restart_input else 0)
        self.mdn_dim = z * k * 3
        self.out_dim = self.mdn_dim + (1 if cfg.done_head else 0) + (0 if cfg.reward_head == "none" else 1)
        self.weight_ih = nn.Parameter(torch.empty(4 * h, self.input_dim))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.head = nn.Linear(h, self.out_dim)
        # torch's kernel wants a second (hidden) bias; ours is fixed at zero, so not a parameter (ref §4.1: one bias)
        self.register_buffer("_zero_bias", torch.zeros(4 * h), persistent=False)
        # how a sequence with restarts inside runs (not a parameter: the weights are the same either way)
        self.restart_path = "auto"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF defaults of the reference: Glorot-uniform kernels, zero biases, forget bias 1.0 (ref §4.1)."""
        h = self.cfg.hidden
        bound = math.sqrt(6.0 / (self.input_dim + h + 4 * h))  # one [In+H, 4H] kernel in TF
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(-bound, bound)
            self.bias.zero_()
            self.bias[h : 2 * h] = 1.0  # TF's forget_bias, folded into the bias (gate order i, f, g, o)
            nn.init.xavier_uniform_(self.head.weight)
            self.head.bias.zero_()

    # ---------------------------------------------------------------------------------------------- API
    def initial_state(self, batch: int, device=None) -> tuple[Tensor, Tensor]:
        """Zero (h, c), each (B, H)."""
        device = self.bias.device if device is None else device
        h = torch.zeros(batch, self.cfg.hidden, device=device, dtype=self.bias.dtype)
        return h, h.clone()

    def forward(
        self, z: Tensor, a: Tensor, restart: Tensor | None = None, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[MDNOutput, tuple[Tensor, Tensor]]:
        """Teacher-forced sequence: z (B, T, Z), a (B, T, A), restart (B, T) in {0, 1} (ignored unless
        cfg.restart_input; None = no restarts), state (h, c) each (B, H) or None for zeros.

        With restart_input, restart[:, t] = 1 zeroes that stream's state BEFORE step t (ref §4.3) and is also an
        input. Returns the outputs (B, T, ...) and the final state."""
        b, t = z.shape[0], z.shape[1]
        if state is None:
            state = self.initial_state(b, z.device)
        if self.cfg.restart_input:
            r = torch.zeros(b, t, device=z.device, dtype=z.dtype) if restart is None else restart.to(z.dtype)
            x = torch.cat([z, a, r.unsqueeze(-1)], dim=-1)  # (B, T, Z+A+1)
            hs, state = self._run_with_restarts(x, r, state)
        else:
            x = torch.cat([z, a], dim=-1)  # (B, T, Z+A)
            hs, state = self._lstm(x, state)
        return self.head_outputs(hs), state

    def step(
        self, z: Tensor, a: Tensor, restart: Tensor | None = None, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[MDNOutput, tuple[Tensor, Tensor]]:
        """One time step of `forward` (same weights, same kernel): z (B, Z), a (B, A), restart (B,).
        Outputs lack T: logpi/mu/logsigma (B, Z, K), done_logit/reward (B,)."""
        r = None if restart is None else restart.unsqueeze(1)  # (B, 1)
        out, state = self.forward(z.unsqueeze(1), a.unsqueeze(1), r, state)
        return MDNOutput(
            logpi=out.logpi[:, 0], mu=out.mu[:, 0], logsigma=out.logsigma[:, 0],
            done_logit=None if out.done_logit is None else out.done_logit[:, 0],
            reward=None if out.reward is None else out.reward[:, 0],
        ), state

    def head_outputs(self, hs: Tensor) -> MDNOutput:
        """Linear head on hidden states hs (B, T, H) -> MDNOutput (ref §4.1 `rnn.py:120-147`)."""
        b, t, _ = hs.shape
        cfg = self.cfg
        y = self.head(hs)  # (B, T, O)
        col = 0
        done = None
        if cfg.done_head:
            done, col = y[..., 0], 1  # ref §4.3: the restart logit is column 0
        mdn = y[..., col : col + self.mdn_dim].reshape(b, t, cfg.z_dim, 3, cfg.mixtures)  # (B, T, Z, 3, K)
        reward = y[..., col + self.mdn_dim] if cfg.reward_head != "none" else None
        logpi = F.log_softmax(mdn[..., 0, :], dim=-1)
        return MDNOutput(logpi=logpi, mu=mdn[..., 1, :], logsigma=mdn[..., 2, :], done_logit=done, reward=reward)

    # ------------------------------------------------------------------------------------------ internals
    def _lstm(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Fused LSTM over x (B, T, In) from state; the hidden sequence (B, T, H) and the final state."""
        h0, c0 = state
        params = [self.weight_ih, self.weight_hh, self.bias, self._zero_bias]
        with warnings.catch_warnings():
            # on CUDA the kernel copies our separate weights into cuDNN's flat buffer each call (~5 MB: cheap)
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            hs, hn, cn = torch.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)), params, True, 1, 0.0, self.training,
                                    False, True)
        return hs, (hn[0], cn[0])

    def _run_with_restarts(self, x: Tensor, r: Tensor, state: tuple[Tensor, Tensor]):
        """The LSTM over x (B, T, In) with the state zeroed before every step where r (B, T) is 1, by the path
        `restart_path` names ('auto': `auto_restart_path` for x's device). Both give the same function."""
        path = self.restart_path if self.restart_path != "auto" else auto_restart_path(x.device)
        if path == "packed" and x.shape[1] > 1 and bool(r[:, 1:].ne(0).any()):
            return self._run_packed(x, r, state)
        return self._run_split(x, r, state)

    def _run_split(self, x: Tensor, r: Tensor, state: tuple[Tensor, Tensor]):
        """Split the sequence where any stream restarts; zero the restarting streams' state at each split: one
        kernel call per split, so as many calls as there are distinct restart times in the batch."""
        t = x.shape[1]
        cuts = [0]
        if t > 1:
            cuts += (torch.nonzero(r[:, 1:].ne(0).any(0)).flatten() + 1).tolist()
        cuts.append(t)
        h, c = state
        outs = []
        for t0, t1 in zip(cuts[:-1], cuts[1:], strict=True):
            keep = (1.0 - r[:, t0]).unsqueeze(-1)  # (B, 1): 0 where a new episode starts at t0
            hs, (h, c) = self._lstm(x[:, t0:t1], (h * keep, c * keep))
            outs.append(hs)
        return torch.cat(outs, dim=1), (h, c)

    def _run_packed(self, x: Tensor, r: Tensor, state: tuple[Tensor, Tensor]):
        """Every stream cut at its own restarts, and all the pieces run as the rows of ONE packed (variable-length)
        sequence: one kernel call whatever the restarts (cuDNN's variable-length LSTM on CUDA). A piece that
        starts a stream starts from that stream's state (zeroed if r[:, 0] is 1), every other piece from zeros
        (it starts an episode); the outputs are put back in (B, T) order and each stream's final state is its last
        piece's."""
        b, t, _ = x.shape
        layout = _pieces(r)
        h0, c0 = state
        keep = (1.0 - r[:, 0]).unsqueeze(-1)  # (B, 1)
        first = layout.first.to(x.device)  # (S,) the stream a piece starts, or -1 (an episode's start: zeros)
        rows = first.clamp_min(0)

        def initial(s0: Tensor) -> Tensor:  # (S, H): the stream's (kept) state for its first piece, else zeros
            return torch.where((first >= 0).unsqueeze(-1), (s0 * keep)[rows], torch.zeros_like(s0[rows]))

        data = x.reshape(b * t, -1)[layout.gather.to(x.device)]  # (N, In) in packed order
        params = [self.weight_ih, self.weight_hh, self.bias, self._zero_bias]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            out, hn, cn = torch.lstm(data, layout.batch_sizes, (initial(h0).unsqueeze(0), initial(c0).unsqueeze(0)),
                                     params, True, 1, 0.0, self.training, False)
        hs = out[layout.scatter.to(x.device)].reshape(b, t, -1)  # (B, T, H) back in stream order
        last = layout.last.to(x.device)  # (B,) each stream's last piece
        return hs, (hn[0][last], cn[0][last])


RESTART_PATHS = ("auto", "split", "packed")


def auto_restart_path(device: torch.device) -> str:
    """The faster path for a batch with restarts inside. CUDA: 'packed', one cuDNN call per batch, where 'split'
    makes one call per restart time (≈ 200 for a paper-size Doom batch of 100 streams × 499 steps). CPU: 'split',
    whose calls run oneDNN's fused LSTM and its backward kernel, while a packed sequence runs step by step under
    autograd: ≈ 9× slower at paper size on the CPU (benchmarks/mdn.py `restart_paths` measures both)."""
    return "packed" if torch.device(device).type == "cuda" else "split"


@dataclass(frozen=True)
class _Pieces:
    """Where the pieces between restarts lie, as index tensors (module `_pieces`). S pieces, N = B·T steps."""

    batch_sizes: Tensor  # (L,) int64 on the CPU: pieces still running at each step (PackedSequence's)
    gather: Tensor  # (N,) the flat (B·T) position of each packed row
    scatter: Tensor  # (N,) the packed row of each flat position (gather's inverse)
    first: Tensor  # (S,) in packed order: the stream whose first piece this is, else -1
    last: Tensor  # (B,) the packed index of each stream's last piece


def _pieces(r: Tensor) -> _Pieces:
    """Cut each stream of r (B, T) before every step whose restart flag is set; pieces sorted longest first, as
    a packed sequence wants them."""
    b, t = r.shape
    starts = r.detach().ne(0).cpu()
    starts[:, 0] = True  # every stream's first step starts a piece
    begin = torch.nonzero(starts.reshape(-1)).flatten()  # (S,) flat positions, in stream then time order
    end = torch.cat([begin[1:], torch.tensor([b * t])])
    length = end - begin  # a piece never crosses a stream: each stream's first step starts one
    order = torch.argsort(length, descending=True, stable=True)  # (S,) packed index -> piece
    length_s, begin_s = length[order], begin[order]
    steps = torch.arange(int(length_s[0]))
    valid = steps[:, None] < length_s[None, :]  # (L, S): piece j still runs at step i (a prefix of each row)
    gather = (begin_s[None, :] + steps[:, None])[valid]  # (N,) time-major over the sorted pieces
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(len(gather))
    stream = begin_s // t
    first = torch.where(begin_s % t == 0, stream, torch.full_like(stream, -1))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))  # piece -> packed index
    last_piece = torch.searchsorted(begin, torch.arange(1, b + 1) * t) - 1  # each stream's last piece
    return _Pieces(batch_sizes=valid.sum(1), gather=gather, scatter=scatter, first=first, last=rank[last_piece])


# ------------------------------------------------------------------------------------------------ losses
def mdn_nll(y: Tensor, out: MDNOutput, mask: Tensor | None = None) -> Tensor:
    """Mixture negative log-likelihood, averaged over batch × time × dims (ref §4.1 `rnn.py:136-160`):

        nll = mean_{b,t,z} −logsumexp_k( logπ_k + log N(y; μ_k, σ_k) ),
        log N(y; μ, σ) = −½((y − μ)/σ)² − log σ − ½ log 2π.

    y (B, T, Z) or (B, Z); mask (B, T) (or (B,)) of valid positions (padding excluded from the mean)."""
    yk = y.unsqueeze(-1)
    logn = -0.5 * ((yk - out.mu) * torch.exp(-out.logsigma)) ** 2 - out.logsigma - LOG_SQRT_2PI
    nll = -torch.logsumexp(out.logpi + logn, dim=-1)  # (B, T, Z)
    return _masked_mean(nll, mask)


def done_bce(logit: Tensor, target: Tensor, pos_weight: float = 10.0, mask: Tensor | None = None) -> Tensor:
    """Weighted sigmoid cross-entropy of the done logit (ref §4.3 `doomrnn.py:399-406`):

        w = 1 + (pos_weight − 1)·target,   loss = mean( w · BCE(logit, target) )

    (the weighted sum divided by the number of positions, not by the sum of weights, as the reference)."""
    target = target.to(logit.dtype)
    w = 1.0 + (pos_weight - 1.0) * target
    return _masked_mean(w * F.binary_cross_entropy_with_logits(logit, target, reduction="none"), mask)


def reward_loss(pred: Tensor, reward: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """regression: mean (pred − r)²; sign: mean BCE(pred, [r > 0]) (the reward's sign as a class)."""
    if kind == "regression":
        return _masked_mean((pred - reward) ** 2, mask)
    if kind == "sign":
        return _masked_mean(F.binary_cross_entropy_with_logits(pred, (reward > 0).to(pred.dtype), reduction="none"), mask)
    raise ValueError(f"unknown reward head {kind!r}")


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------- sampling
def sample_next(
    out: MDNOutput,
    tau: float,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """Sample z' (..., Z) from step outputs (..., Z, K) at temperature τ, each dimension independently (ref §4.4):

        π = softmax(logπ / τ);  k ~ Categorical(π) per dimension;  z' = μ_k + exp(logσ_k)·√τ·ε,  ε ~ N(0, 1).

    k is drawn by inverse CDF from u ~ U[0, 1) (..., Z), so callers can pass pre-drawn noise `u` and `eps`
    (..., Z); otherwise u = torch.rand then eps = torch.randn, in that order, from `generator`. τ = 0 gives the most
    likely component's mean. τ never touches the done logit (ref §7)."""
    shape = out.mu.shape[:-1]
    if u is None:
        u = torch.rand(shape, generator=generator, device=out.mu.device, dtype=out.mu.dtype)
    if eps is None:
        eps = torch.randn(shape, generator=generator, device=out.mu.device, dtype=out.mu.dtype)
    if tau <= 0:
        k = out.logpi.argmax(dim=-1, keepdim=True)  # (..., Z, 1)
        return out.mu.gather(-1, k).squeeze(-1)
    cdf = torch.softmax(out.logpi / tau, dim=-1).cumsum(dim=-1)  # (..., Z, K)
    k = (cdf <= u.unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp_max(out.mu.shape[-1] - 1)  # (..., Z, 1)
    mu = out.mu.gather(-1, k).squeeze(-1)
    sigma = torch.exp(out.logsigma.gather(-1, k).squeeze(-1))
    return mu + sigma * math.sqrt(tau) * eps


def is_done(out: MDNOutput) -> Tensor:
    """Done when the done logit > 0, i.e. p > 0.5: a deterministic cut-off that τ does not affect (ref §7)."""
    if out.done_logit is None:
        raise ValueError("this M has no done head")
    return out.done_logit > 0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- loading
def load_mdn(path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_incomplete: bool = False
             ) -> tuple[MDNRNN, object]:
    """Rebuild M from an `mdn` artifact's model_config and weights (never from constants) -> (model in eval mode,
    artifacts.Meta): an MDN-RNN, or an RSSM when the model_config says so (`models.dynamics`). An unfinished
    training checkpoint is refused unless `allow_incomplete`."""
    from ..store import checkpoint
    from .dynamics import build

    return checkpoint.load_model(path, "mdn", build, str(device), allow_incomplete=allow_incomplete)


def load_initial_z(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(μ, logσ²) (E, Z) of the first frame of each training episode stored in an mdn artifact (ref §7)."""
    from ..runtime.errors import ArtifactError
    from ..store import artifacts as A

    with A.open_artifact(path, "mdn") as fh:
        mu, logvar = A.read_initial_z(fh)
    if mu.dtype.kind != "f" or mu.ndim != 2 or logvar.shape != mu.shape:
        raise ArtifactError(f"{path}: initial_mu/initial_logvar are not (E, Z) float arrays (damaged artifact)")
    if not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
        raise ArtifactError(f"{path}: the initial z of its episodes (where dreams start) hold NaN or inf (damaged)")
    return mu, logvar
