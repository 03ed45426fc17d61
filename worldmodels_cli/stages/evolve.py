"""`wm evolve`: CMA-ES over the controller's parameters, fitness from the real env or from M's dream (ref §6, §7).

CMA-ES (pycma) starts at mean 0 with sigma0, minimises -(mean return over `trials` rollouts). Per generation the
episode seeds follow the reference's antithetic scheme: pop/2 seeds drawn per generation, members i and i+pop/2
share one (ref §6). Every `eval_every` generations the CMA mean is evaluated on `eval_episodes` fixed seeds
0..N-1 and the best so far is kept.

Resume without pickle: the artifact stores every generation's fitness values. pycma draws its samples only from
the `randn` we hand it (a seeded numpy Generator) and numpy's global RNG (seeded through its `seed` option), so
replaying ask/tell with the stored fitnesses rebuilds the optimizer bit for bit; the stored mean checks it. Its
eigendecompositions round differently with the BLAS thread count, so every ask/tell runs on one BLAS thread: a run
resumes exactly under any OMP_NUM_THREADS.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import tracking
from ..config import ControllerConfig, EvolveConfig, Preset
from ..runtime import Runtime, seeding
from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import runs
from ..store.metrics import MetricsWriter, kv, metrics_path, progress

log = logging.getLogger(__name__)

# history/* datasets, one row per generation (eval_* are NaN where no evaluation ran)
METRIC_NAMES = {"best": "pop_best", "mean": "pop_mean", "worst": "pop_worst"}  # history key -> metric name
HISTORY_KEYS = ("best", "mean", "worst", "sigma", "seconds", "eval_score", "eval_std", "eval_real_score", "eval_real_std")


class Fitness(Protocol):
    """Returns (P, R) episode returns for P parameter vectors, each run on its own R seeds."""

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class EvolveResult:
    out: Path
    generations: int
    best_score: float
    best_generation: int
    last_mean_fitness: float


# ------------------------------------------------------------------------------------------- CMA-ES
def make_cma(n: int, cfg: EvolveConfig, seed: int):
    """A pycma strategy whose randomness is entirely ours, with every early-stopping rule off."""
    import cma

    cma_seed = seeding.derive(seed, "cma")
    rng = np.random.default_rng(cma_seed)
    opts = {
        "popsize": cfg.pop,
        "seed": cma_seed,  # seeds numpy's global RNG, which pycma uses in a few places
        "randn": lambda lam, dim: rng.standard_normal((lam, dim)),
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
        # runs go to the configured generation count: pycma stops early on tied fitness otherwise
        "tolfun": 0, "tolfunhist": 0, "tolx": 0, "tolflatfitness": math.inf, "tolstagnation": math.inf,
        "tolconditioncov": math.inf, "tolfacupx": math.inf, "tolupsigma": math.inf, "tolxstagnation": False,
        "maxiter": math.inf,
    }
    return cma.CMAEvolutionStrategy(n * [0.0], cfg.sigma0, opts)


def one_blas_thread():
    """Context for pycma's linear algebra: on one thread it rounds the same whatever OMP_NUM_THREADS says."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def replay(es, fitness_history: np.ndarray) -> None:
    """Advance a fresh strategy through recorded generations (ask, then tell the recorded fitnesses)."""
    with one_blas_thread():
        for row in fitness_history:
            es.tell(es.ask(), list(row))


def generation_seeds(cfg: EvolveConfig, seed: int, generation: int) -> np.ndarray:
    """(pop, trials) episode seeds: pop/2 member seeds per generation, shared by members i and i+pop/2 (ref §6)."""
    half = max(1, cfg.pop // 2)
    base = np.random.default_rng(seeding.derive(cfg.seed_start, "evolve-seeder", seed, generation))
    member = base.integers(0, 2**31 - 1, size=half)
    member = member[np.arange(cfg.pop) % half]
    # each member runs its trials consecutively from its seed, as a worker did with env.seed(seed)
    return np.array([[seeding.derive(int(s), "trial", t) for t in range(cfg.trials)] for s in member], dtype=np.int64)


def eval_seeds(cfg: EvolveConfig) -> np.ndarray:
    """The fixed evaluation seeds 0..N-1 (ref §6: the original used seeds 0..63 x 16 episodes)."""
    return np.arange(cfg.eval_episodes, dtype=np.int64)[None, :]


# ------------------------------------------------------------------------------------------- state
@dataclass
class _State:
    fitness: list[np.ndarray]  # per generation: (pop,) values told to CMA (= -mean return)
    history: dict[str, list[float]]
    best_params: np.ndarray
    best_score: float
    best_generation: int


def _new_state(n: int) -> _State:
    return _State([], {k: [] for k in HISTORY_KEYS}, np.zeros(n), -math.inf, -1)


def _load_state(path: Path, n: int, config_json: dict, seed: int, inputs: dict, es, generations: int) -> _State:
    """Read a previous run of the same command; replay CMA to its last generation when more are to come."""
    meta = A.validate(path, "controller")
    free = ("evolve.generations",)  # a run may be extended with more generations
    runs.check_same_run(str(path), runs.identity(meta.config, meta.seed, meta.inputs, free=free),
                        runs.identity(config_json, seed, inputs, free=free))
    with A.open_artifact(path, "controller") as fh:
        fitness = fh[A.CMA][A.FITNESS][()] if A.CMA in fh else np.zeros((0, 0))
        hist = {k: list(fh[A.HISTORY][k][()]) for k in HISTORY_KEYS}
        best_params = fh[A.BEST_PARAMS][()]
        mean = fh[A.MEAN][()]
        try:
            best_score = float(fh.attrs.get(A.BEST_SCORE, -math.inf))
            best_generation = int(fh.attrs.get(A.BEST_GENERATION, -1))
        except (TypeError, ValueError):
            raise ArtifactError(f"{path}: unreadable best_score/best_generation attributes (damaged)") from None
    if best_params.shape != (n,):
        raise ArtifactError(f"{path}: holds {best_params.size} parameters, this controller has {n}")
    if fitness.dtype.kind not in "iuf" or fitness.ndim != 2 or (len(fitness) and fitness.shape[1] != es.popsize):
        raise ArtifactError(f"{path}: cma/fitness is not a (generations, pop) array of numbers (damaged)")
    if not all(np.isfinite(a).all() for a in (fitness, mean, best_params)):
        raise ArtifactError(f"{path}: holds NaN or inf in its optimizer state (damaged); delete it to start over")
    if len(fitness) >= generations:  # finished: nothing left to ask, so the optimizer need not be rebuilt
        return _State([r for r in fitness], hist, best_params, best_score, best_generation)
    replay(es, fitness)
    if len(fitness) and not np.array_equal(np.asarray(es.mean), mean):
        raise ArtifactError(f"{path}: the optimizer state could not be rebuilt exactly (mean differs after replay)")
    return _State([r for r in fitness], hist, best_params, best_score, best_generation)


def _write(path: Path, st: _State, es, preset: Preset, seed: int, model_config: dict, inputs: dict, done: bool) -> None:
    with A.atomic_write(path, "controller", config=preset, seed=seed, inputs=inputs, env=preset.env.name) as fh:
        fh.create_dataset(A.MEAN, data=np.asarray(es.mean, dtype=np.float64))
        fh.create_dataset(A.BEST_PARAMS, data=st.best_params.astype(np.float64))
        hist = fh.create_group(A.HISTORY)
        for k in HISTORY_KEYS:
            hist.create_dataset(k, data=np.asarray(st.history[k], dtype=np.float64))
        cma = fh.create_group(A.CMA)
        cma.create_dataset(A.FITNESS, data=np.asarray(st.fitness, dtype=np.float64).reshape(len(st.fitness), -1))
        fh.attrs[A.BEST_SCORE] = st.best_score
        fh.attrs[A.BEST_GENERATION] = st.best_generation
        fh.attrs[A.MODEL_CONFIG] = A._to_json(model_config)
        A.set_summary(fh, {
            "generations": len(st.fitness), "complete": done, "best_score": st.best_score,
            "best_generation": st.best_generation, "sigma": float(es.sigma),
            "last_best": st.history["best"][-1] if st.history["best"] else None,
            "last_mean": st.history["mean"][-1] if st.history["mean"] else None,
            "parameters": int(len(st.best_params)),
        })


# ------------------------------------------------------------------------------------------- run
def optimize(
    preset: Preset,
    out: Path,
    *,
    fitness: Fitness,
    n_params: int,
    model_config: dict,
    inputs: dict,
    seed: int = 0,
    real_fitness: Fitness | None = None,
    on_generation: Any = None,
    runtime: Runtime | None = None,
) -> EvolveResult:
    """Run (or resume) CMA-ES to `preset.evolve.generations`; checkpoint the artifact every generation; plot.

    The stage-agnostic loop: `fitness` scores candidates (dream or real env); `real_fitness`, when given, also scores the CMA mean in the
    real env at evaluation generations (`--eval-real`). `runtime`: where the metrics are tracked (its seed is `seed`)."""
    cfg = preset.evolve
    out = Path(out)
    es = make_cma(n_params, cfg, seed)
    config_json = A._loads(A._to_json(preset))
    st = _load_state(out, n_params, config_json, seed, inputs, es, cfg.generations) if out.exists() else _new_state(n_params)
    if out.exists():
        done = len(st.fitness) >= cfg.generations
        log.info("%s: %s %d generations", out, "already evolved for" if done else "resuming at", len(st.fitness))
    metrics = MetricsWriter(metrics_path(out), truncate=not out.exists())
    metrics.truncate_after("generation", len(st.fitness))  # generations count from 1, in metrics as in logs
    start_gen = len(st.fitness)
    if start_gen < cfg.generations:
        tracking.start(metrics, out, (runtime or Runtime()).replace(seed=seed), stage="evolve", config=preset,
                       step_key="generation", first_step=start_gen + 1)  # generations count from 1
    t_run = time.time()
    with metrics, progress(cfg.generations, "evolve", unit="gen", initial=start_gen) as bar:
        for gen in range(start_gen, cfg.generations):
            t0 = time.time()
            with one_blas_thread():
                solutions = es.ask()
            params = np.asarray(solutions, dtype=np.float64)  # (P, n)
            returns = np.asarray(fitness(params, generation_seeds(cfg, seed, gen)), dtype=np.float64)  # (P, R)
            extra = fitness.metrics() if hasattr(fitness, "metrics") else {}  # a pessimistic dream's unknown steps
            mean_returns = returns.mean(axis=1)
            told = -mean_returns  # CMA minimises; no weight-decay term (ref §6: the code's had the wrong sign)
            with one_blas_thread():
                es.tell(solutions, list(told))
            st.fitness.append(told)
            row = {"best": mean_returns.max(), "mean": mean_returns.mean(), "worst": mean_returns.min(),
                   "sigma": float(es.sigma), "eval_score": math.nan, "eval_std": math.nan,
                   "eval_real_score": math.nan, "eval_real_std": math.nan}
            is_eval = (gen + 1) % cfg.eval_every == 0 or gen + 1 == cfg.generations
            if is_eval:
                mean_params = np.asarray(es.mean, dtype=np.float64)[None, :]
                ev = np.asarray(fitness(mean_params, eval_seeds(cfg)), dtype=np.float64)[0]
                row["eval_score"], row["eval_std"] = ev.mean(), ev.std()
                if real_fitness is not None and cfg.eval_real > 0:
                    rv = np.asarray(real_fitness(mean_params, np.arange(cfg.eval_real)[None, :]), dtype=np.float64)[0]
                    row["eval_real_score"], row["eval_real_std"] = rv.mean(), rv.std()
                if ev.mean() > st.best_score:
                    st.best_score, st.best_generation = float(ev.mean()), gen
                    st.best_params = mean_params[0].copy()
            row["seconds"] = time.time() - t0
            for k in HISTORY_KEYS:
                st.history[k].append(float(row[k]))
            _write(out, st, es, preset, seed, model_config, inputs, done=gen + 1 == cfg.generations)
            rollouts = returns.size / max(row["seconds"], 1e-9)
            eta = (cfg.generations - gen - 1) * (time.time() - t_run) / (gen + 1 - start_gen)
            # "pop_": the population's returns this generation; "eval": the CMA mean's on the fixed evaluation seeds
            named = {f"evolve/{METRIC_NAMES.get(k, k)}": v for k, v in row.items()}
            metrics.write({"generation": gen + 1, **named, "evolve/rollouts_per_s": rollouts, **extra})
            line = kv(gen=f"{gen + 1}/{cfg.generations}", pop_best=row["best"], pop_mean=row["mean"], sigma=row["sigma"],
                      rollouts_per_s=rollouts, eta_s=round(eta))
            if is_eval:
                line += " " + kv(eval=row["eval_score"], eval_real=row["eval_real_score"])
            log.info(line)
            bar.update(1)
            if on_generation is not None:
                on_generation(gen, row)
        if start_gen >= cfg.generations and not out.exists():
            _write(out, st, es, preset, seed, model_config, inputs, done=True)
        metrics.image("evolve/fitness", plot_history(out), len(st.fitness))
    return EvolveResult(out, len(st.fitness), st.best_score, st.best_generation,
                        st.history["mean"][-1] if st.history["mean"] else math.nan)


def controller_model_config(cfg: ControllerConfig, env: str, z_dim: int, hidden: int, action_dim: int,
                            cell: int | None = None) -> dict:
    """What load_controller needs to rebuild C: its config plus the sizes read from V and M (`cell`: the width of
    an RSSM's stoch, C's "c"; an MDN-RNN's cell is H wide, and its controllers record no cell)."""
    mc = {"controller": cfg.to_dict(), "env": env, "z_dim": z_dim, "hidden": hidden, "action_dim": action_dim}
    return mc if cell is None else {**mc, "cell": cell}


def controller_for(cfg: ControllerConfig, env: str, mdn) -> tuple:
    """C for M `mdn` (either dynamics) -> (Controller, its model_config)."""
    from ..models.controller import Controller
    from ..models.dynamics import memory_widths, name

    h, c = memory_widths(mdn)
    cell = c if name(mdn) == "rssm" else None
    mc = mdn.cfg
    return (Controller(cfg, mc.z_dim, h, mc.action_dim, env, cell),
            controller_model_config(cfg, env, mc.z_dim, h, mc.action_dim, cell))


def run(preset: Preset, vae: Path, mdn: Path, out: Path, *, runtime: Runtime = Runtime()) -> EvolveResult:
    """`wm evolve`: build C for V and M, pick the fitness (dream or real env), run or resume CMA-ES, plot."""
    seed, device, workers, backend, address = runtime.seed, runtime.device, runtime.workers, runtime.backend, runtime.address
    from ..dream.program import DreamFitness
    from ..game.agent import AgentSpec
    from ..game.episodes import EpisodeRunner
    from ..models.mdnrnn import load_mdn
    from ..models.vae import load_vae
    from ..runtime import device as devices

    cfg = preset.evolve
    vae_meta, mdn_meta = A.validate(vae, "vae"), A.validate(mdn, "mdn")
    for meta in (vae_meta, mdn_meta):
        if meta.env != preset.env.name:
            raise ConfigError(f"{meta.path}: made for {meta.env}, but the preset is for {preset.env.name}")
    mdn_model, _ = load_mdn(mdn)
    load_vae(vae)  # a damaged V fails here in one line, not later in a worker or at evaluation
    mc = mdn_model.cfg
    if mc.z_dim != vae_meta.model_config.get("z_dim", mc.z_dim):
        raise ConfigError(f"{vae} (z={vae_meta.model_config.get('z_dim')}) and {mdn} (z={mc.z_dim}) do not match")
    controller, model_config = controller_for(preset.controller, preset.env.name, mdn_model)
    spec = AgentSpec(str(vae), str(mdn), model_config)
    real = None
    check_pessimism(cfg.pessimism, mdn, in_dream=cfg.in_dream)
    if cfg.in_dream:
        if not mc.done_head and mc.reward_head == "none":
            raise ConfigError(f"{mdn}: --in-dream needs an M with a done or reward head (this one predicts only z)")
        fitness = DreamFitness.from_artifact(mdn, controller, tau=cfg.temperature, max_steps=cfg.max_steps,
                                             device=devices.resolve(device), pessimism=cfg.pessimism,
                                             penalty=cfg.pessimism_penalty, workers=workers, backend=backend,
                                             address=address)
        if cfg.eval_real:
            real = EpisodeRunner(preset.env, agent=spec, workers=workers, backend=backend, address=address)
    else:
        fitness = EpisodeRunner(preset.env, agent=spec, workers=workers, backend=backend, address=address,
                                stall_steps=cfg.stall_steps)
    try:
        result = optimize(preset, out, fitness=fitness, n_params=controller.param_count, model_config=model_config,
                          inputs=A.inputs_record({"vae": vae, "mdn": mdn}), seed=seed, real_fitness=real,
                          runtime=runtime)
    finally:
        fitness.close()
        if real is not None:
            real.close()
    return result


def check_pessimism(pessimism: str, mdn: Path, *, in_dream: bool = True) -> None:
    """A pessimistic dream needs the dream and an ensemble of Ms (docs/pessimism.md): one line otherwise."""
    from ..models.ensemble import is_ensemble

    if pessimism == "off":
        return
    if not in_dream:
        raise ConfigError(f"--pessimism {pessimism} acts in M's dream: add --in-dream")
    if not is_ensemble(mdn):
        raise ConfigError(f"{mdn}: --pessimism {pessimism} needs an ensemble of Ms (wm train-mdn --ensemble K); "
                          "this artifact holds one M")


def plot_history(out: Path) -> Path | None:
    """`<out>.fitness.png`: best / mean / worst per generation and the periodic evaluations."""
    from ..plots import loss_curves

    records = MetricsWriter(metrics_path(out)).read()
    keys = ["evolve/pop_best", "evolve/pop_mean", "evolve/pop_worst", "evolve/eval_score", "evolve/eval_real_score",
            "evolve/sigma"]
    return loss_curves(records, keys, Path(out).with_suffix(".fitness.png"), x_key="generation",
                       title=f"CMA-ES: {Path(out).name}")
