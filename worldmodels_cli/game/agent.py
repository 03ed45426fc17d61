"""The world-model agent in a real env: V encodes each frame, M carries memory, C acts (ref §5.1, §5.2).

`BatchAgent` runs B episodes at once (one V encode, one C product, one M step per env step for all of them, each
episode with its own C parameters and random stream), an actor of `episodes.lockstep`: what real-env evolution,
evaluation and collection with a controller step in each worker, and what a single episode (a video) runs with B=1.

Step order (ref §5.1 `model.py:98-118`; §5.2 `doomreal.py:64-115`): encode the frame and *sample* z_t (not μ);
a_t = C([z_t, (c_t,) h_t]); advance M with (z_t, a_t, restart) before the env steps; then env.step(a_t). M always
receives the continuous action (CarRacing: the mapped steer/gas/brake; Doom: the tanh output the env thresholds).
No forced no-op steps at the start (ref §C.8).

With an RSSM for M (`models.dynamics`) the agent filters as Dreamer's does: M sees z_t (with a_{t−1}, or from the
zero state at an episode's first frame) before C acts, and C acts on [z_t, stoch_t, deter_t] of that posterior
state; the posterior's class choices draw from the episode's own stream after z's noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dream.fused import FusedM
from ..models.controller import Controller, apply_layers, build_controller, load_controller
from ..models.dynamics import memory_widths, name
from ..models.mdnrnn import MDNRNN, load_mdn
from ..models.rssm import RSSM
from ..models.vae import ConvVAE, load_vae
from ..runtime.device import few_rows_one_thread
from ..runtime.errors import ArtifactError
from ..store import artifacts as A
from .encoder import MIN_ROWS, FrameEncoder


class BatchAgent:
    """V, M and C for B episodes stepped in lockstep, each with its own C parameters and random stream.

    `start(params, rngs)` begins B episodes; `act(frames, rows)` gives the actions of the episodes `rows` (the
    ones still running) for their frames: one V encode, one C product and one M step for all of them."""

    def __init__(self, vae: ConvVAE, mdn: MDNRNN | RSSM, controller: Controller) -> None:
        if vae.config.z_dim != mdn.cfg.z_dim:
            raise ArtifactError(f"V has z={vae.config.z_dim} but M expects z={mdn.cfg.z_dim}: not a matching pair")
        if controller.dynamics != name(mdn):
            raise ArtifactError(f"a controller for an {controller.dynamics} M, but M is an {name(mdn)}")
        h, c = memory_widths(mdn)
        if controller.z_dim != mdn.cfg.z_dim or controller.hidden != h or controller.cell != c:
            raise ArtifactError(
                f"the controller expects z={controller.z_dim}, H={controller.hidden}"
                + (f", stoch {controller.cell}" if isinstance(mdn, RSSM) else "")
                + f"; M has z={mdn.cfg.z_dim}, H={h}" + (f", stoch {c}" if isinstance(mdn, RSSM) else "")
            )
        self.vae, self.mdn, self.controller = vae.eval(), mdn.eval(), controller
        self.encode = FrameEncoder(self.vae)  # V's (μ, log σ²) (R, Z) of frames (R, 64, 64, 3)
        self.rngs: list[np.random.Generator] = []
        self.memory = RSSMMemory(mdn, controller) if isinstance(mdn, RSSM) else LSTMMemory(mdn, controller)

    def start(self, params: np.ndarray | None, rngs: list[np.random.Generator]) -> None:
        """B = len(rngs) new episodes; params (B, n) (None: every row uses the controller's own parameters)."""
        self.rngs = list(rngs)
        self.memory.start(self._rows(params, len(rngs)))

    def renew(self, row: int, params: np.ndarray | None, rng: np.random.Generator) -> None:
        """A new episode in `row` (its previous one ended) with C's params (n,) (None: the controller's own)."""
        self.rngs[row] = rng
        self.memory.renew(row, self._rows(params, 1))

    def _rows(self, params: np.ndarray | None, b: int) -> torch.Tensor:
        """C's params for b rows (b, n): the given ones, or the controller's own in every row."""
        own = self.controller.params
        if params is None:
            return own.unsqueeze(0).expand(b, -1)
        return torch.as_tensor(np.asarray(params)).to(own.dtype).reshape(b, self.controller.param_count)

    @torch.inference_mode()
    def act(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """frames (R, 64, 64, 3) uint8 of the episodes `rows` (R,) -> their actions (R, A) float32.

        On one torch thread, as in the workers: the rows' matmuls then round alike whichever rows share them."""
        with few_rows_one_thread(len(rows), "cpu"):
            return self._act(frames, np.asarray(rows, dtype=np.int64))

    def _act(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
        mu, logvar = self.encode(frames)  # (R, Z)
        # each episode draws from its own stream, as one episode alone would: (1, Z) per step
        eps = torch.from_numpy(np.concatenate([self.rngs[i].standard_normal((1, mu.shape[1])) for i in rows])
                               .astype(np.float32))
        z = mu + torch.exp(0.5 * logvar) * eps  # ref §5.1: C sees a sample, not μ
        action = self.memory.act(z, rows, [self.rngs[i] for i in rows])
        return action.float().numpy()


class LSTMMemory:
    """The MDN-RNN's memory for B episodes, and C acting on it: C reads (h, c) as they are, M advances on
    (z_t, a_t) after C acts.

    The state lives in the dream's layout (`dream.fused.FusedM`: a row [c | z | a | restart | 1 | h] per episode,
    one matmul per step, no mixture head: the real env needs only the memory), and C reads its features straight
    from it. Every row steps every time, at least MIN_ROWS of them (a matmul of fewer rows rounds differently):
    one shape, no gathers; a finished episode's row goes on with stale inputs and is never read again."""

    def __init__(self, mdn: MDNRNN, controller: Controller) -> None:
        self.m, self.controller = FusedM(mdn, torch.float32, "cpu"), controller

    def start(self, params: torch.Tensor) -> None:
        """New episodes with C's params (B, n): zero state and restart = 1 (ref §5.2)."""
        b, m = params.shape[0], self.m
        n = max(b, MIN_ROWS)
        self.S = m.new_state(torch.zeros(n, m.z_dim))  # (N, width)
        self.buf = m.buffers(n)
        wide = torch.cat([params, params.new_zeros(n - b, params.shape[1])]).to(self.S.dtype)
        self.layers, self.cols = m.row_layers(self.controller, wide)  # C's weights (N, F', A) on S[:, cols]
        self.b = b

    def renew(self, row: int, params: torch.Tensor) -> None:
        """Row `row` starts a new episode with C's params (1, n): its state zero, restart = 1, its C weights."""
        self.S[row] = self.m.new_state(self.S.new_zeros(1, self.m.z_dim))[0]
        layers, _ = self.m.row_layers(self.controller, params.to(self.S.dtype))
        for (w, b), (w1, b1) in zip(self.layers, layers, strict=True):
            w[row] = w1[0]
            if b is not None:
                b[row] = b1[0]

    def act(self, z: torch.Tensor, rows: np.ndarray, rngs) -> torch.Tensor:
        """z (R, Z) of the running episodes `rows` -> their actions (R, A); M advanced."""
        m, S = self.m, self.S
        idx = slice(0, self.b) if len(rows) == self.b else torch.from_numpy(rows)  # all running: a view
        S[idx, m.z_] = z
        raw = apply_layers(self.layers, S[:, self.cols].unsqueeze(1))[:, 0]  # (N, A): row r with its own C
        action = self.controller.to_action(raw)
        S[:, m.a_] = action
        m.advance(S, self.buf)
        if m.restart:
            S[:, m.r_col] = 0.0
        return action[idx]


class RSSMMemory:
    """An RSSM's state for B episodes, filtered by its posterior (Dreamer's agent), and C acting on it: `observe`
    takes z_t with the previous action (the zero state at an episode's first frame) before C acts; a_t is kept for
    the next. The rows run in a batch of at least MIN_ROWS, so an episode's state is the same whichever episodes
    share its batch (as V's encode)."""

    def __init__(self, rssm: RSSM, controller: Controller) -> None:
        self.rssm, self.controller = rssm, controller

    def start(self, params: torch.Tensor) -> None:
        """New episodes with C's params (B, n) from the zero state."""
        b = params.shape[0]
        self.params = params.clone()  # renew writes rows: not a view of C's own
        self.deter, self.stoch = self.rssm.initial_state(b)
        self.action = torch.zeros(b, self.rssm.cfg.action_dim, dtype=self.deter.dtype)
        self.first = torch.ones(b, dtype=self.deter.dtype)

    def renew(self, row: int, params: torch.Tensor) -> None:
        """Row `row` starts a new episode with C's params (1, n) from the zero state."""
        deter, stoch = self.rssm.initial_state(1)
        self.params[row], self.deter[row], self.stoch[row] = params[0], deter[0], stoch[0]
        self.action[row], self.first[row] = 0.0, 1.0

    def act(self, z: torch.Tensor, rows: np.ndarray, rngs) -> torch.Tensor:
        """z (R, Z) of the running episodes `rows` -> their actions (R, A)."""
        rows_t = torch.from_numpy(rows)
        h, c = self.observe(z, rows_t, rngs)
        x = self.controller.features(z, h, c).to(self.params.dtype).unsqueeze(1)  # (R, 1, F)
        raw = self.controller.forward_batched(self.params[rows_t], x)[:, 0]  # (R, A): row r with its own C
        action = self.controller.to_action(raw)
        self.action[rows_t] = action.to(self.action.dtype)
        return action

    def observe(self, z: torch.Tensor, rows: torch.Tensor, rngs) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior states of the episodes `rows` after frame z (R, Z) -> C's (h, c) = (deter, stoch)."""
        # each episode's class choices from its own stream, after z's noise
        u = torch.from_numpy(np.concatenate([g.random((1, self.rssm.cfg.stoch)) for g in rngs])).to(z.dtype)
        args = (self.deter[rows], self.stoch[rows], self.action[rows], z, self.first[rows], u)
        n = len(rows)
        if n < MIN_ROWS:  # pad: a smaller matmul may round differently (encoder.MIN_ROWS)
            args = tuple(torch.cat([a, a[:1].expand(MIN_ROWS - n, *a.shape[1:])]) for a in args)
        deter, stoch, _, _ = self.rssm.obs_step(*args)
        self.deter[rows], self.stoch[rows] = deter[:n], stoch[:n]
        self.first[rows] = 0.0
        return deter[:n], stoch[:n]


@dataclass(frozen=True)
class AgentSpec:
    """Everything a worker needs to rebuild the agent: paths and the controller's recorded sizes (picklable)."""

    vae: str
    mdn: str
    controller_config: dict

    def build_batch(self) -> BatchAgent:
        vae, _ = load_vae(self.vae)
        mdn, _ = load_mdn(self.mdn)
        return BatchAgent(vae, mdn, build_controller(self.controller_config))


def recorded_input(meta: A.Meta, role: str, override: str | os.PathLike | None) -> Path:
    """The V or M a controller was evolved with: `override` if given, else the recorded file wherever it now is
    (`lineage.locate`), whose bytes must still be the recorded ones (a retrained file at the same path would
    silently change the agent)."""
    from ..store.lineage import locate

    rec = meta.inputs.get(role)
    if override is not None:
        env = A.validate(override, role).env
        if meta.env and env != meta.env:
            raise ArtifactError(f"{override}: a {env} {role}, but {meta.path} is a {meta.env} controller")
        return Path(override)
    if not rec:
        raise ArtifactError(f"{meta.path}: records no {role} artifact; pass --{role} explicitly")
    return locate(meta.path, rec, role)


def agent_spec(controller_path: str | os.PathLike, *, which: str = "best", vae: str | None = None,
               mdn: str | None = None) -> tuple[AgentSpec, np.ndarray, A.Meta]:
    """Resolve a controller artifact into (spec, params, meta), rebuilding V and M from what it records."""
    controller, params, meta = load_controller(controller_path, which)
    spec = AgentSpec(str(recorded_input(meta, "vae", vae)), str(recorded_input(meta, "mdn", mdn)), meta.model_config)
    return spec, params, meta
