"""`wm iterate`: the paper's iterative training procedure (ref §9), round after round, resumable.

Round 0 is the paper's experiment: random-policy data -> V -> series -> M -> C evolved in M's dream -> real
evaluation. Each later round collects new episodes with the previous round's controller (plus exploration noise),
so M sees what the random policy never showed it (walls, long survivals: ref §B), retrains M (and V, when
`later_vae_epochs` > 0) on old + new data starting from the previous weights (so M does not forget), and evolves C
again in the new dream. Every round records its dream and real scores and the wall time of each stage in
`<data>/iterate.json`, and as a metric record (a tracker's per-round curves) in `<data>/iterate.metrics.jsonl`.

With `controller_frames` set, a round collects that many frames rather than a fixed number of episodes (at most
`controller_episodes`): a controller that survives twice as long collects half as many episodes.

With `later_vae_epochs` = 0 (the default) V is trained once, in round 0, and kept: the frames of later rounds show
the same room, walls and fireballs, and what the controller's data add is dynamics, which is M's job. Each round
then encodes only its own new episodes, and M trains on every round's series.

The last round evolves the final controller with population `final_pop` (the paper's 64) for the preset's
generations, and evaluates it on `eval_episodes` real episodes. The earlier rounds' controllers only collect data:
they evolve for `data_generations_fraction` of the generations and are evaluated on `data_eval_episodes`, enough
to size the next collection (small Doom: 20 generations and 30 episodes; with the frame budget they bring
`make demo` from 70 to 44 minutes on 2 cores: docs/pipeline.md). On three small-Doom final Ms, six population-64 runs scored
502-799 real steps and six population-32 runs 405-718 (docs/results.md).

The last round chooses its dream temperature from inside the dream (`final_temperatures`, small Doom: 1.5, 1.15,
0.8): it evolves C at each in turn, hottest first, and keeps the first C whose dream score is at least
`final_dream_ratio` (2) × the uniform random policy's dream length at that τ. A small M's dream is too kind at 0.8
for one seed (C finds a hole and dies fast in the real game) and too harsh at 1.15 for another (no C stands out
of the noise); the ladder takes the hottest dream in which C still clearly learns. The real game only measures
the kept controller (docs/results.md). A started round keeps the population and τ it began with, so adding rounds to a run
continues it; a rerun of the last round replays its ladder from the rungs already evolved.

`dynamics` = "rssm" (`wm iterate --dynamics rssm`) makes every round's M an RSSM (`train_rssm`), warm-started
from the previous round's like the MDN-RNN; the rest of the procedure is the same. `method` = "actor-critic"
(`wm iterate --method actor-critic`) trains every round's C with the latent actor-critic (`train_controller`)
instead of CMA-ES, for the same fraction of its steps in the data rounds and on the same τ ladder: with both, the
four world models of `wm compare` meet on iterative data, not only on the random policy's.

`ensemble` K >= 2 (`wm iterate --ensemble K`) makes every round's M an ensemble of K MDN-RNNs (`train_ensemble`;
member k warm-starts from the previous round's member k), and `pessimism` halt or penalty makes every round's
dream pessimistic where they disagree, the τ ladder's random-policy baseline included (docs/pessimism.md).
`final_ensemble` K and `final_pessimism` do so for the last round alone (every member warm-starts from the
previous round's single M), and a pessimistic final dream replaces the τ ladder: C evolves at the preset's τ.

Every stage resumes or skips itself when its artifact is complete, so rerunning the same command continues where
it stopped; the stage functions are called in-process (no subprocess per stage).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import tracking
from ..config import ActorCriticConfig, IterateConfig, Preset, actor_critic_config
from ..runtime import Runtime
from ..store import artifacts as A
from ..store import files
from ..store.metrics import MetricsWriter, metrics_path

log = logging.getLogger(__name__)

RECORD = "iterate.json"


@dataclass
class RoundRecord:
    round: int
    dream_score: float = float("nan")  # best evaluation of the CMA mean in the dream (ref §6)
    pop: int = 0  # the CMA-ES population C was evolved with (the preset's, unused, with the actor-critic)
    tau: float = float("nan")  # the dream temperature C was evolved at
    real_mean: float = float("nan")
    real_std: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)
    vae: str = ""  # the V this round's M and C use (round 0's when V is kept)
    ladder: list = field(default_factory=list)  # the last round's τ rungs tried (`_climb_down`), if any
    members: int = 1  # Ms in this round's M: an ensemble's K
    pessimism: str = "off"  # what C's dream did where the members disagree
    method: str = "cma-es"  # how C was made in the dream: cma-es or actor-critic (IterateConfig.method)


def round_dir(data: Path, k: int) -> Path:
    return data / f"round{k}"


def timed(seconds: dict[str, float], stage: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its wall time added to seconds[stage]; a banner line names the stage."""
    log.info("---- %s", stage)
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    seconds[stage] = seconds.get(stage, 0.0) + round(time.monotonic() - t0, 1)
    return out


def run(preset: Preset, data: Path, it: IterateConfig, *, on_round=None, ac: ActorCriticConfig | None = None,
        runtime: Runtime = Runtime()) -> list[RoundRecord]:
    """Run (or continue) `it.rounds` rounds under `data/round<k>/`; returns one record per round, also written
    to `<data>/iterate.metrics.jsonl` (each round's real and dream scores as curves in a tracker). `ac`: the
    actor-critic's settings where `it.method` is actor-critic (default: the preset scale's)."""
    data = Path(data)
    if not data.is_dir():
        data.mkdir(parents=True)
    # every round is revisited (its stages find their work done), so each invocation rewrites the round records
    writer = MetricsWriter(metrics_path(data / RECORD), truncate=True)
    config = {"preset": preset.to_dict(), "iterate": it.to_dict()}
    learner = _Learner(it, ac or actor_critic_config(preset.env.name, preset.scale))
    with tracking.start(writer, data / RECORD, runtime, stage="iterate", config=config, step_key="round"):
        return _rounds(preset, data, it, learner, writer, on_round, runtime)


def _rounds(preset: Preset, data: Path, it: IterateConfig, learner: _Learner, writer: MetricsWriter, on_round,
            runtime: Runtime) -> list[RoundRecord]:
    from . import collect, encode, evaluate, train_mdn, train_vae

    record_path = data / RECORD
    records = _load_records(record_path)
    if it.method == "actor-critic" and preset.env.name == "carracing":  # it learns from M's rewards (as compare's)
        preset = preset.replace(mdn=preset.mdn.replace(reward_head="regression"))
    preset = preset.replace(mdn_train=preset.mdn_train.replace(ensemble=it.ensemble),
                            evolve=preset.evolve.replace(pessimism=it.pessimism,
                                                         pessimism_penalty=it.pessimism_penalty))
    rollouts: list[Path] = []
    series: list[Path] = []
    prev: dict[str, Path] = {}
    for k in range(it.rounds):
        d = round_dir(data, k)
        # with --track-dir, the rounds' runs apart as their artifacts are (beside them they are anyway)
        tracked = runtime.replace(track_dir=str(Path(runtime.track_dir) / d.name)) if runtime.track_dir else runtime
        this = tracked.replace(seed=runtime.seed + k)  # round k's stages draw from their own seed
        d.mkdir(exist_ok=True)
        rec = records[k] if k < len(records) else RoundRecord(k)
        log.info("==== round %d (%d of %d) in %s", k, k + 1, it.rounds, d)
        r, v, s, m, c, e = (d / n for n in ("rollouts.h5", "vae.h5", "series.h5", "mdn.h5", "controller.h5", "eval.h5"))
        p = preset
        if k == 0:
            timed(rec.seconds, "collect", collect.run, p, r, runtime=this)
        else:
            n = controller_episodes(it, round_dir(data, k - 1) / "eval.h5")
            pc = p.replace(collect=p.collect.replace(episodes=n, policy="controller", noise=it.noise, min_length=0))
            timed(rec.seconds, "collect", collect.run, pc, r, controller=prev["controller"], runtime=this)
            p = p.replace(vae_train=p.vae_train.replace(epochs=it.later_vae_epochs),
                          mdn_train=p.mdn_train.replace(steps=max(1, int(p.mdn_train.steps * it.later_mdn_steps_fraction))))
        rollouts.append(r)
        if k == 0 or it.later_vae_epochs > 0:
            timed(rec.seconds, "train-vae", train_vae.run, p, list(rollouts), v, init=prev.get("vae"), runtime=this)
            timed(rec.seconds, "encode", encode.run, list(rollouts), v, s, runtime=this,
                   batch_size=p.encode.batch_size, mirror=p.encode.mirror)
            series = [s]
        else:  # V kept: only the new episodes need encoding (module doc)
            v = prev["vae"]
            timed(rec.seconds, "encode", encode.run, [r], v, s, runtime=this,
                   batch_size=p.encode.batch_size, mirror=p.encode.mirror)
            series.append(s)
        rec.vae = str(v)
        last = k == it.rounds - 1
        if last and it.final_ensemble > 1:  # only the final C's M: K times one round's M training, not every round's
            p = p.replace(mdn_train=p.mdn_train.replace(ensemble=it.final_ensemble),
                          evolve=p.evolve.replace(pessimism=it.final_pessimism))
        rec.members, rec.pessimism, rec.method = p.mdn_train.ensemble, p.evolve.pessimism, it.method
        timed(rec.seconds, "train-mdn", train_mdn.run, p, list(series), m, init=prev.get("mdn"),
              dynamics=it.dynamics, runtime=this)
        p = p.replace(evolve=p.evolve.replace(generations=round_generations(p, it, last=last)))
        # τ means nothing to real-env fitness; a pessimistic final dream takes the ladder's place
        ladder = last and it.final_temperatures and p.evolve.in_dream and it.final_pessimism == "off"
        if ladder and (not c.exists() or _rung(c, it.final_temperatures[0]).exists()):
            rec.ladder = _climb_down(rec, p, it, learner, v, m, c, this)
        pop, tau = _round_evolve(c, p, it, last=last)
        p = p.replace(evolve=p.evolve.replace(pop=pop, temperature=tau))
        rec.pop, rec.tau = p.evolve.pop, p.evolve.temperature
        ev = timed(rec.seconds, learner.stage, learner, p, v, m, c, last=last, runtime=this)
        rec.dream_score = ev.best_score
        episodes = it.eval_episodes if last else min(it.data_eval_episodes, it.eval_episodes)
        if not complete_eval(e, episodes, c):
            timed(rec.seconds, "evaluate", evaluate.run, e, controller=c, episodes=episodes, runtime=tracked)
        with A.open_artifact(e, "eval") as fh:
            returns = fh[A.RETURNS][()]
        rec.real_mean, rec.real_std = float(returns.mean()), float(returns.std())
        log.info("==== round %d done: dream %.1f, real %.1f ± %.1f over %d episodes", k, rec.dream_score, rec.real_mean,
                 rec.real_std, len(returns))
        records[k:k + 1] = [rec]
        _save_records(record_path, records)
        writer.write({"round": k, "iterate/real_mean": rec.real_mean, "iterate/real_std": rec.real_std,
                      "iterate/dream_score": rec.dream_score, "iterate/pop": rec.pop, "iterate/tau": rec.tau,
                      **{f"iterate/{stage.replace('-', '_')}_seconds": t for stage, t in rec.seconds.items()}})
        log.info("round %d: dream %.1f, real %.1f ± %.1f", k, rec.dream_score, rec.real_mean, rec.real_std)
        if on_round is not None:
            on_round(rec)
        prev = {"vae": v, "mdn": m, "controller": c}
    return records[: it.rounds]


def controller_episodes(it: IterateConfig, prev_eval: Path) -> int:
    """Episodes to collect with the previous round's controller. A better controller's episodes are longer; with
    `controller_frames` set they are fewer (frames / the mean length of its real evaluation), so collecting and
    encoding a round cost about the same whatever the controller."""
    if it.controller_frames <= 0:
        return it.controller_episodes
    with A.open_artifact(prev_eval, "eval") as fh:
        mean_length = float(np.mean(fh[A.LENGTHS][()]))
    return max(1, min(it.controller_episodes, math.ceil(it.controller_frames / max(mean_length, 1.0))))


def round_generations(p: Preset, it: IterateConfig, *, last: bool) -> int:
    """The preset's generations in the last round; `data_generations_fraction` of them (at least 1) before it.
    A round's generations may change when rounds are added: evolve extends a run or finds it finished."""
    return data_round_share(p.evolve.generations, it.data_generations_fraction, last=last)


def data_round_share(n: int, fraction: float, *, last: bool) -> int:
    """n in the last round; `fraction` of n (at least 1, at most n) in a data round."""
    return n if last else max(1, min(n, round(n * fraction)))


def _round_evolve(controller: Path, p: Preset, it: IterateConfig, *, last: bool) -> tuple[int, float]:
    """A round's CMA-ES population and dream τ: `final_pop` (0: the preset's) in the last round, and the preset's
    τ (the last round's ladder, `_climb_down`, has written its controller by then). A started controller keeps its
    own (rounds added later, a resumed run), because evolve refuses to continue a run with other settings."""
    if controller.exists():
        try:
            ev = A.validate(controller, "controller").config["evolve"]
            return int(ev["pop"]), float(ev["temperature"])
        except (A.ArtifactError, KeyError, TypeError, ValueError):
            pass  # evolve.run reports a damaged artifact in one line
    pop = it.final_pop if last and it.final_pop > 0 else p.evolve.pop
    return pop, p.evolve.temperature


def _climb_down(rec: RoundRecord, p: Preset, it: IterateConfig, learner: _Learner, v: Path, m: Path, c: Path,
                runtime: Runtime) -> list[dict]:
    """The last round's τ ladder: evolve C at each of `it.final_temperatures` in turn (hottest first) into
    `<c>.tau<τ>.h5`, and keep the first whose dream score reaches `final_dream_ratio` × the uniform random policy's
    dream score at that τ (if none does, the one furthest above it): copied to `c`. A hotter dream is harder to
    exploit, but too hot a one drowns the fitness in noise, and the ratio tells the two apart from inside the dream.
    Returns one entry per rung tried. Every rung resumes or skips itself, so an interrupted ladder continues."""
    pop = it.final_pop if it.final_pop > 0 else p.evolve.pop
    rungs = []
    for tau in it.final_temperatures:
        out = _rung(c, tau)
        q = p.replace(evolve=p.evolve.replace(pop=pop, temperature=tau))
        ev = timed(rec.seconds, learner.stage, learner, q, v, m, out, last=True, runtime=runtime)
        random_score = random_dream_score(m, tau, q.evolve.max_steps, seed=runtime.seed, device=runtime.device,
                                          pessimism=q.evolve.pessimism, penalty=q.evolve.pessimism_penalty)
        rungs.append({"tau": tau, "dream_score": ev.best_score, "random_dream": random_score,
                      "ratio": ev.best_score / random_score, "path": str(out)})
        log.info("final τ %g: dream score %.1f, %.2f× the random policy's %.1f", tau, ev.best_score,
                 rungs[-1]["ratio"], random_score)
        if rungs[-1]["ratio"] >= it.final_dream_ratio:
            break
    kept = rungs[-1] if rungs[-1]["ratio"] >= it.final_dream_ratio else max(
        rungs, key=lambda r: r["ratio"] if math.isfinite(r["ratio"]) else -math.inf)
    kept["kept"] = True
    # the kept rung becomes the round's controller, with its per-generation metrics (the fitness plot, a resume)
    for src, dst in ((metrics_path(kept["path"]), metrics_path(c)), (Path(kept["path"]), c)):
        if src.exists():  # no metrics beside the rung: the plot is all that is missing
            files.copy_atomic(src, dst)
    return rungs


class _Learner:
    """Makes a round's C in the dream: CMA-ES (`wm evolve`, `p.evolve.generations`) or the actor-critic (`wm
    train-controller`, its steps scaled by `data_generations_fraction` before the last round as CMA-ES's generations
    are). Either returns a result with `best_score`, the dream score the ladder and the round record use."""

    def __init__(self, it: IterateConfig, ac: ActorCriticConfig) -> None:
        self.method, self.ac, self.fraction = it.method, ac, it.data_generations_fraction
        self.stage = "evolve" if it.method == "cma-es" else "train-controller"

    def __call__(self, p: Preset, v: Path, m: Path, c: Path, *, last: bool, runtime: Runtime):
        from . import evolve, train_controller

        if self.method == "cma-es":
            return evolve.run(p, v, m, c, runtime=runtime)
        steps = data_round_share(self.ac.steps, self.fraction, last=last)
        return train_controller.run(p, self.ac.replace(steps=steps), v, m, c, runtime=runtime)


def _rung(c: Path, tau: float) -> Path:
    return c.with_name(f"{c.stem}.tau{tau:g}.h5")


def random_dream_score(mdn_path: Path, tau: float, max_steps: int, *, seed: int, device: str = "auto",
                       episodes: int = 256, pessimism: str = "off", penalty: float = 1.0) -> float:
    """The uniform random policy's mean return in M's dream at τ, the baseline a rung is measured by (in Doom's
    dream the return is the length survived); in the same pessimistic dream as C's."""
    from ..dream.program import random_policy_done_rate
    from ..models.ensemble import load_ensemble
    from ..models.mdnrnn import load_initial_z, load_mdn
    from ..runtime import device as devices

    dev = devices.resolve(device)
    mdn = load_mdn(mdn_path, dev)[0] if pessimism == "off" else load_ensemble(mdn_path, dev)
    mu, logvar = load_initial_z(mdn_path)
    return random_policy_done_rate(mdn, mu, logvar, episodes=episodes, tau=tau, max_steps=max_steps, seed=seed,
                                   pessimism=pessimism, penalty=penalty)["mean_return"]


def complete_eval(path: Path, episodes: int, controller: Path) -> bool:
    if not path.exists():
        return False
    try:
        meta = A.validate(path, "eval")
        # it must have measured this very controller (a rerun's ladder may keep another rung)
        if meta.inputs.get("controller", {}).get("sha256") != A.sha256(controller):
            return False
        # more episodes than asked also do: a round that was last keeps its full evaluation when rounds are added
        return meta.summary.get("episodes", 0) >= episodes
    except A.ArtifactError:
        return False


def _load_records(path: Path) -> list[RoundRecord]:
    if not path.exists():
        return []
    try:
        return [RoundRecord(**r) for r in json.loads(path.read_text())]
    except (json.JSONDecodeError, TypeError):
        log.warning("%s is unreadable; round records start afresh (artifacts are reused)", path)
        return []


def _save_records(path: Path, records: list[RoundRecord]) -> None:
    files.write_text_atomic(path, json.dumps([r.__dict__ for r in records], indent=2, default=_nan_safe))


def _nan_safe(x):
    return float(x) if isinstance(x, np.floating) else str(x)
