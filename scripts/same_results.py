"""Do two revisions of the code make the same artifacts? The guard for refactors that must not change a result.

    python scripts/same_results.py REV            # REV (a git revision) against the working tree
    python scripts/same_results.py REV_A REV_B    # two revisions
    python scripts/same_results.py --small-doom REV   # also a short `small` Doom run in the real game

Each revision runs the `tiny` pipeline of both envs through the `wm` command line only (so any internal layout
works): collect -> train-vae -> encode -> train-mdn -> evolve (Doom in the dream, CarRacing in the real game) ->
evaluate, seed 0, on the CPU, in a fresh folder, with this interpreter (the same packages for both); with
`--small-doom` also the `small` Doom preset cut short (12 real vizdoom episodes, a tenth of an epoch of V, 30 steps
of M, 2 generations in the dream, 4 real episodes; ≈ 3 minutes more per revision). Then every
dataset and every recorded attribute of every artifact is compared byte for byte, except what names a time, a
path or a package version. Prints each difference; exit status 1 if any. Same machine, same result: run it on one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# when and with what, never what; inputs record their files' checksums, which cover those files' own timestamps
SKIP = {"@created", "@versions", "@inputs", "history/seconds"}
PIPELINE = [  # (command, args) per env; {env} is filled in
    ("collect", "--env {env} --preset tiny --out r.h5 --workers 2"),
    ("train-vae", "--rollouts r.h5 --preset tiny --out v.h5 --device cpu"),
    ("encode", "--rollouts r.h5 --vae v.h5 --out s.h5 --device cpu"),
    ("train-mdn", "--series s.h5 --preset tiny --out m.h5 --device cpu"),
    ("evolve", "--vae v.h5 --mdn m.h5 --preset tiny --out c.h5 --device cpu --workers 2"),
    ("evaluate", "--controller c.h5 --preset tiny --episodes 4 --out e.h5 --workers 2"),
]


SMALL_DOOM = [
    ("collect", "--env doom --preset small --episodes 12 --out r.h5 --workers 2"),
    ("train-vae", "--rollouts r.h5 --preset small --epochs 0.1 --out v.h5 --device cpu"),
    ("encode", "--rollouts r.h5 --vae v.h5 --preset small --out s.h5 --device cpu"),
    ("train-mdn", "--series s.h5 --preset small --steps 30 --out m.h5 --device cpu"),
    ("evolve", "--vae v.h5 --mdn m.h5 --preset small --generations 2 --out c.h5 --device cpu"),
    ("evaluate", "--controller c.h5 --preset small --episodes 4 --out e.h5 --workers 2"),
]


def run_pipeline(tree: Path, work: Path, small_doom: bool = False) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    runs = [("doom", "doom", PIPELINE), ("carracing", "carracing", PIPELINE)]
    if small_doom:
        runs.append(("small-doom", "doom", SMALL_DOOM))
    for folder, name, pipeline in runs:
        d = work / folder
        d.mkdir(parents=True)
        for cmd, args in pipeline:
            argv = [sys.executable, "-m", "worldmodels_cli", cmd, *args.format(env=name).split(), "--seed", "0"]
            out = subprocess.run(argv, cwd=d, env=env, capture_output=True, text=True, timeout=900, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{tree}: {name} {cmd} failed ({out.returncode}):\n{out.stderr[-2000:]}")


def digest(work: Path) -> dict[str, str]:
    """`<env>/<file>:<dataset or @attribute>` -> a digest of its bytes, for every artifact under `work`."""
    out: dict[str, str] = {}
    for path in sorted(work.rglob("*.h5")):
        key = str(path.relative_to(work))
        with h5py.File(path, "r") as fh:
            for name, value in fh.attrs.items():
                if f"@{name}" not in SKIP:
                    out[f"{key}:@{name}"] = _hash(value)

            def visit(name, obj, key=key):
                if name in SKIP:
                    return
                if isinstance(obj, h5py.Dataset):
                    data = obj[()]
                    out[f"{key}:{name}"] = _hash(np.asarray(data).tobytes() + str((obj.dtype, obj.shape)).encode())
                for attr, value in obj.attrs.items():
                    out[f"{key}:{name}@{attr}"] = _hash(value)

            fh.visititems(visit)
    return out


def _hash(value) -> str:
    raw = value if isinstance(value, bytes) else np.asarray(value).tobytes() if isinstance(value, np.ndarray) else str(value).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    return where


def main(argv: list[str]) -> int:
    small_doom = "--small-doom" in argv
    argv = [a for a in argv if a != "--small-doom"]
    if not 1 <= len(argv) <= 2:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory(prefix="same-results-") as tmp:
        tmp = Path(tmp)
        trees, worktrees = [], []
        for i, rev in enumerate(argv):
            worktrees.append(checkout(rev, tmp / f"tree{i}"))
            trees.append((rev, worktrees[-1]))
        if len(argv) == 1:
            trees.append(("working tree", ROOT))
        try:
            digests = []
            for i, (rev, tree) in enumerate(trees):
                print(f"running the tiny pipelines with {rev} ...", flush=True)
                run_pipeline(tree, tmp / f"run{i}", small_doom)
                digests.append(digest(tmp / f"run{i}"))
        finally:
            for w in worktrees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(w)], check=False)
    (a_name, _), (b_name, _) = trees
    a, b = digests
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for k in differ:
        print(f"differs: {k} ({'missing in ' + b_name if k not in b else 'missing in ' + a_name if k not in a else 'bytes'})")
    print(f"{len(a)} datasets and attributes compared: {'all equal' if not differ else f'{len(differ)} differ'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
