"""`wm evaluate`: a controller (or a random baseline) over N real episodes with fixed seeds (ref §6, §8).

A controller artifact records its V and M (path and checksum) and C's sizes, so the agent is rebuilt from it
alone. Episode i runs from seed `derive(seed, "evaluate", i)`: the same `--seed` gives every policy the same games,
which is how the paper's table compares them. `--policy random` is the paper's baseline (Doom: left / none /
right uniformly every tic); `--policy data` is the data-collection policy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tracking
from ..config import EnvConfig, Preset
from ..game.agent import agent_spec
from ..game.episodes import POLICIES, EpisodeRunner
from ..runtime import Runtime, seeding
from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import files, metrics
from ..store.metrics import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    out: Path | None
    policy: str
    env: str
    returns: np.ndarray
    lengths: np.ndarray
    seeds: np.ndarray
    video: Path | None = None

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())

    def line(self) -> str:
        what = "steps survived" if self.env == "doom" else "return"
        return (f"{self.policy} on {self.env}: {what} {self.mean:.1f} ± {self.std:.1f} over {len(self.returns)} "
                f"episodes (min {self.returns.min():.1f}, max {self.returns.max():.1f})"
                + (f" -> {self.out}" if self.out else ""))


def episode_seeds(seed: int, episodes: int) -> np.ndarray:
    return np.array([seeding.derive(seed, "evaluate", i) for i in range(episodes)], dtype=np.int64)


def run(out: Path | None, *, controller: str | os.PathLike | None = None, policy: str = "agent",
        preset: Preset | None = None, episodes: int = 100, video: str | os.PathLike | None = None,
        vae: str | None = None, mdn: str | None = None, which: str = "best",
        runtime: Runtime = Runtime()) -> EvalResult:
    """Evaluate `controller` (policy 'agent') or a baseline policy on `preset.env`; write an eval artifact."""
    seed, workers, backend, address = runtime.seed, runtime.workers, runtime.backend, runtime.address
    if policy not in POLICIES:
        raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if out is not None:
        files.check_writable(Path(out))
        if Path(out).exists():  # re-evaluating replaces an eval artifact; anything else is never overwritten
            try:
                A.validate(out, "eval")
            except ArtifactError as exc:
                raise ArtifactError(f"{exc}; refusing to overwrite it (use another --out)") from None
    spec, params, inputs = None, None, {}
    if policy == "agent":
        if controller is None:
            raise ConfigError("--controller is required unless --policy random or data")
        spec, params, meta = agent_spec(controller, which=which, vae=vae, mdn=mdn)
        scale = meta.preset
        try:
            env_cfg = EnvConfig.from_dict(meta.config["env"])
        except (KeyError, TypeError, ValueError, ConfigError):
            raise ArtifactError(f"{controller}: records no valid env config (damaged artifact)") from None
        if preset is not None and preset.env.name != env_cfg.name:
            raise ConfigError(f"{controller}: a {env_cfg.name} controller, but --env {preset.env.name}")
        spec.build_batch()  # V and M load here: a damaged one fails in one line, not inside a worker
        if preset is not None and preset.env.fake != env_cfg.fake:
            env_cfg = env_cfg.replace(fake=preset.env.fake)
        collect_cfg = None
        inputs = A.inputs_record({"controller": controller, "vae": spec.vae, "mdn": spec.mdn})
        label = f"controller {Path(controller).name}"
    else:
        if controller is not None:
            raise ConfigError(f"--controller and --policy {policy} exclude each other")
        if preset is None:
            raise ConfigError(f"--policy {policy} needs --env")
        env_cfg, collect_cfg = preset.env, preset.collect
        scale = preset.scale
        label = f"{policy} policy"
    seeds = episode_seeds(seed, episodes)
    with EpisodeRunner(env_cfg, policy=policy, agent=spec, collect=collect_cfg, workers=workers, backend=backend,
                       address=address) as runner:
        with progress(episodes, "evaluate", unit="ep") as bar:
            returns, lengths = runner.episodes(None if params is None else params[None, :], seeds[None, :],
                                               progress=bar.update)
    returns, lengths = returns[0], lengths[0]
    video_path = None
    if video is not None:
        video_path = record_video(video, env_cfg, spec, params, policy, collect_cfg, int(seeds[0]))
    record = {"env": env_cfg.to_dict(), "policy": policy, "episodes": episodes, "which": which, "scale": scale}
    if out is not None:
        with A.atomic_write(out, "eval", config=record, seed=seed, inputs=inputs, env=env_cfg.name) as fh:
            fh.create_dataset(A.RETURNS, data=returns)
            fh.create_dataset(A.LENGTHS, data=lengths)
            fh.create_dataset(A.EPISODE_SEEDS, data=seeds)
            A.set_summary(fh, {"policy": label, "episodes": episodes, "mean": returns.mean(), "std": returns.std(),
                               "min": returns.min(), "max": returns.max(), "mean_length": lengths.mean()})
    if out is not None or video_path is not None:
        _write_metrics(Path(out) if out is not None else video_path, {**record, "inputs": inputs}, returns, lengths,
                       seeds, video_path, runtime)
    return EvalResult(Path(out) if out else None, label, env_cfg.name, returns, lengths, seeds, video_path)


def _write_metrics(beside: Path, config: dict, returns: np.ndarray, lengths: np.ndarray, seeds: np.ndarray,
                   video: Path | None, runtime: Runtime) -> None:
    """`<out>.metrics.jsonl` (beside the video when there is no eval artifact): a record per episode, then the
    summary; the video to the tracker. Each evaluation replaces the last one's, as it replaces the artifact."""
    writer = metrics.MetricsWriter(metrics.metrics_path(beside), truncate=True)
    with tracking.start(writer, beside, runtime, stage="evaluate", config=config, step_key="evaluate/episode"):
        for i, (ret, length, s) in enumerate(zip(returns, lengths, seeds, strict=True)):
            writer.write({"evaluate/episode": i, "evaluate/return": ret, "evaluate/length": length,
                          "evaluate/seed": s})
        writer.write({"evaluate/mean": returns.mean(), "evaluate/std": returns.std(), "evaluate/min": returns.min(),
                      "evaluate/max": returns.max(), "evaluate/mean_length": lengths.mean(),
                      "evaluate/episodes": len(returns)})
        writer.image("evaluate/episode_video", video, 0)


def record_video(path, env_cfg: EnvConfig, spec, params, policy: str, collect_cfg, seed: int) -> Path:
    """One episode from `seed`: the real frames, and beside them V's reconstruction of each (what C saw)."""
    import torch

    from ..game.envs import make_env
    from ..game.policies import baseline_policy, random_policy
    from ..models.vae import to_input
    from ..video import check_video_path, side_by_side, write_video
    from .collect import rollout

    check_video_path(path)
    env = make_env(env_cfg)
    try:
        if policy == "agent":
            agent = spec.build_batch()
            agent.controller.set_params(params)
            steps = rollout(env, agent, seed, env_cfg.max_steps)  # the agent alone: the same episode as in a chunk
        else:
            pol = baseline_policy(env_cfg) if policy == "random" else random_policy(env_cfg, collect_cfg)
            steps = rollout(env, pol, seed, env_cfg.max_steps)
    finally:
        env.close()
    frames = steps[A.FRAMES]
    columns = [frames]
    if policy == "agent":
        recon = []
        with torch.no_grad():
            for i in range(0, len(frames), 256):
                mu, _ = agent.vae.encode(to_input(torch.from_numpy(frames[i:i + 256])))
                recon.append((agent.vae.decode(mu).permute(0, 2, 3, 1) * 255).round().byte().numpy())
        columns.append(np.concatenate(recon))
    fps = 35.0 if env_cfg.name == "doom" else 50.0
    return write_video(path, side_by_side(*columns), fps=fps)
