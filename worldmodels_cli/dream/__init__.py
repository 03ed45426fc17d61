"""The dream: M as the environment (ref §7), batched over a whole CMA-ES generation.

Modules: `streams` (the counter-based random streams), `fused` (M's weights laid out for the batched step),
`fused_rssm` (an RSSM behind the same interface: either M runs through the one program), `fused_ensemble` (an
ensemble of MDN-RNNs side by side, their disagreement every step: the pessimistic dream of docs/pessimism.md),
`program` (the batched program, its fitness and diagnostics), `reference` (the plain one-rollout loop, for either
M, and an ensemble's). The `wm dream`
animation is `stages/dream.py`. What follows describes the MDN-RNN's dream; an RSSM's (models/rssm.py) starts from
a first frame's posterior, draws its categorical classes (one uniform per variable per step, from the same
streams) where the MDN-RNN draws mixture components, and samples z' from its z head at τ.

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
