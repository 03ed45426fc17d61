"""`wm report`: the paper's tables (ref §8) with a column of our numbers, read from a `make reproduce` data folder.

Layout read (what reproduce.mk writes): `<data>/doom/{vae,mdn}.h5`, `controller_t<tau>.h5`, `eval_t<tau>.h5`,
`eval_random.h5`, `eval_data.h5`; `<data>/carracing/{vae,mdn}.h5`, `controller_{zh,z,zhidden}.h5`,
`eval_{zh,z,zhidden,random}.h5`. A row whose artifacts do not exist yet says "not run".
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..runtime.errors import ConfigError
from ..store import artifacts as A
from ..store.metrics import MetricsWriter, metrics_path

NOT_RUN = "not run"

CAR_ROWS = [  # (method, paper score, our eval artifact)
    ("DQN", "343 ± 18", None),
    ("A3C (continuous)", "591 ± 45", None),
    ("A3C (discrete)", "652 ± 10", None),
    ("ceobillionaire's algorithm", "838 ± 11", None),
    ("V model only, z input", "632 ± 251", "eval_z"),
    ("V model only, z input with a hidden layer", "788 ± 141", "eval_zhidden"),
    ("Full World Model, z and h", "906 ± 21", "eval_zh"),
    ("Random policy (the original's data policy)", "—", "eval_random"),
]
DOOM_TAUS = [("0.10", "2086 ± 140", "193 ± 58"), ("0.50", "2060 ± 277", "196 ± 50"), ("1.00", "1145 ± 690", "868 ± 511"),
             ("1.15", "918 ± 546", "1092 ± 556"), ("1.30", "732 ± 269", "753 ± 139")]


def _eval(path: Path) -> str:
    if not path.exists():
        return NOT_RUN
    meta = A.validate(path, "eval")
    s = meta.summary
    return f"{s['mean']:.0f} ± {s['std']:.0f} ({s['episodes']} episodes)"


def _dream(path: Path) -> str:
    if not path.exists():
        return NOT_RUN
    s = A.validate(path, "controller").summary
    done = "" if s.get("complete") else f", {s.get('generations')} generations so far"
    best = s.get("best_score")
    return NOT_RUN if best is None or best == float("-inf") else f"{best:.0f} (1024-rollout eval of the CMA mean{done})"


def _minutes(path: Path) -> str:
    recs = MetricsWriter(metrics_path(path)).read()
    times = [r["time"] for r in recs if "time" in r]
    return f"{(max(times) - min(times)) / 60:.1f} min" if len(times) > 1 else "—"


def build(data: Path) -> str:
    """The report as markdown."""
    data = Path(data)
    car, doom = data / "carracing", data / "doom"
    out = ["# worldmodels_cli: the paper's experiments", "",
           "Paper numbers: Ha & Schmidhuber 2018 (ref §8; CarRacing-v0 and ppaquette DoomTakeCover-v0). "
           "Ours: gymnasium CarRacing-v3 and vizdoom take_cover at skill 4 (ref §A, §B), 100 real episodes with "
           "fixed seeds unless stated.", "",
           "## CarRacing (ref §8.1)", "", "| method | paper | ours |", "|---|---|---|"]
    for method, paper, key in CAR_ROWS:
        ours = "—" if key is None else _eval(car / f"{key}.h5")
        out.append(f"| {method} | {paper} | {ours} |")
    out += ["", "## DoomTakeCover: temperature sweep, C trained only in the dream (ref §8.2)", "",
            "| τ | paper virtual | paper actual | ours virtual | ours actual |", "|---|---|---|---|---|"]
    for tau, virt, act in DOOM_TAUS:
        tag = tau.replace(".", "")
        out.append(f"| {tau} | {virt} | {act} | {_dream(doom / f'controller_t{tag}.h5')} | {_eval(doom / f'eval_t{tag}.h5')} |")
    out.append(f"| random policy (uniform per tic) | N/A | 210 ± 108 | N/A | {_eval(doom / 'eval_random.h5')} |")
    out.append(f"| random policy (data collection, held 1–10 tics) | N/A | — | N/A | {_eval(doom / 'eval_data.h5')} |")
    out += ["", "## Protocol", ""]
    out.append(f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs{_gpu()}.")
    for env_dir in (car, doom):
        for name in ("rollouts", "vae", "series", "mdn"):
            p = env_dir / f"{name}.h5"
            if p.exists():
                meta = A.validate(p)
                v = meta.versions
                out.append(f"- {env_dir.name}/{name}: seed {meta.seed}, {_minutes(p)}; gymnasium {v.get('gymnasium')}, "
                           f"vizdoom {v.get('vizdoom')}, torch {v.get('torch')}; summary {json.dumps(_short(meta.summary))}")
    pics = sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))
    if pics:
        out += ["", "## Pictures", ""] + [f"- `{data.name}/{p}`" for p in pics]
    return "\n".join(out) + "\n"


def _short(summary: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in summary.items() if not isinstance(v, (dict, list))}


def _gpu() -> str:
    try:
        import torch

        return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    except ImportError:
        return ""


def run(data: Path, out: Path) -> Path:
    if not Path(data).is_dir():  # a mistyped folder would otherwise give an all-"not run" report and exit 0
        raise ConfigError(f"{data}: no such data folder (the folder `make reproduce` fills; see --data)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(build(data))
    os.replace(tmp, out)
    return out
