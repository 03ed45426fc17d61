"""How well M predicts Doom's deaths on the episodes its training held out (issue 22: what the screen flash changes).

The dream ends a rollout where M's done logit is above 0, so what matters is how M's done head ranks and
thresholds real steps it never trained on. For each mdn artifact (an ensemble's: its first member) and the series
it trained on, this replays the held-out episodes (`val_episodes` of the series, split with M's own seed, as
`wm train-mdn` did) through M, teacher-forced from each episode's first frame, and scores the done logit of every
step against whether that step ended the episode by a death:

    PYTHONPATH=. python scripts/doom_done_probe.py --mdn data/demo-seed0/round0/mdn.h5 [--mdn M2 ...]
        [--series S1 --series S2 ...]     # default: the series each M records as its inputs

One JSON line per M: `steps` and `deaths` scored; `bce`, the mean unweighted binary cross-entropy per step;
`auc`, the chance that a death step's logit is above a random other step's (0.5: no information); `recall`, the
share of deaths whose step has a logit > 0 (the dream would have ended there); `false_per_1000`, steps with a
logit > 0 that are not deaths, per 1000 such steps; `warned_<k>`, the share of deaths with a logit > 0 somewhere in
the last k steps before them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldmodels_cli.models.mdnrnn import load_mdn
from worldmodels_cli.runtime import seeding
from worldmodels_cli.store.series_data import load_series, sample_z, split_episodes

WARN = (5, 20)


@torch.no_grad()
def done_logits(mdn_path: str, series: list[str] | None, batch: int = 32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per held-out episode: the done logit of each of its steps (every frame in, with its action) and its target
    (the step ended the episode by a death), z drawn from V's (μ, σ) with a fixed seed."""
    mdn, meta = load_mdn(mdn_path)
    if not series:  # the series M recorded as its inputs, in its order (their paths relative to M's folder)
        series = [str(Path(mdn_path).parent / rec["relative"]) for rec in meta.inputs["series"]]
    data = load_series(series)
    _, val = split_episodes(data.episodes, float(meta.config["mdn_train"]["val_episodes"]), meta.seed)
    rng = seeding.generator(meta.seed, "done-probe")
    logits, targets = [], []
    for i in range(0, len(val), batch):
        eps = val[i : i + batch]
        starts, lengths = data.index.starts[eps], data.index.lengths[eps]
        idx = starts[:, None] + np.minimum(np.arange(int(lengths.max()))[None, :], lengths[:, None] - 1)
        z = torch.from_numpy(sample_z(data.mu[idx], data.logvar[idx], rng))
        restart = torch.zeros(idx.shape)
        restart[:, 0] = 1.0
        out, _ = mdn(z, torch.from_numpy(data.actions[idx]), restart)
        for row, n in enumerate(lengths):
            logits.append(out.done_logit[row, :n].numpy().astype(np.float64))
            targets.append(data.terminated[idx[row, :n]])
    return logits, targets


def scores(logits: list[np.ndarray], targets: list[np.ndarray]) -> dict:
    x, y = np.concatenate(logits), np.concatenate(targets)
    bce = np.mean(np.logaddexp(0.0, x) - y * x)
    order = np.argsort(x, kind="stable")  # AUC by ranks (Mann-Whitney)
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    pos, neg = int(y.sum()), int((~y).sum())
    auc = (ranks[y].sum() - pos * (pos + 1) / 2) / max(pos * neg, 1)
    out = {"steps": len(x), "deaths": pos, "bce": round(float(bce), 4), "auc": round(float(auc), 4),
           "recall": round(float((x[y] > 0).mean()) if pos else float("nan"), 4),
           "false_per_1000": round(1000 * float((x[~y] > 0).mean()), 2)}
    for k in WARN:
        warned = [bool((lg[max(0, i - k + 1) : i + 1] > 0).any())
                  for lg, tg in zip(logits, targets, strict=True) for i in np.flatnonzero(tg)]
        out[f"warned_{k}"] = round(float(np.mean(warned)), 4) if warned else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mdn", action="append", required=True, help="mdn artifact (repeat, one per --series)")
    ap.add_argument("--series", action="append", help="the series artifact(s) it trained on, comma-separated "
                    "(repeat, one per --mdn; default: those M records as its inputs)")
    args = ap.parse_args()
    series = args.series or [""] * len(args.mdn)
    if len(args.mdn) != len(series):
        ap.error("give one --series per --mdn, or none")
    for m, s in zip(args.mdn, series, strict=True):
        print(json.dumps({"mdn": m, **scores(*done_logits(m, [x for x in s.split(",") if x]))}))


if __name__ == "__main__":
    main()
