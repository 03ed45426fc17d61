"""Lineage: artifacts record their preset and command; stages inherit the preset; inputs are found when moved;
`wm rerun` repeats a command."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from worldmodels_cli.store import artifacts as A


def _set_preset(path, value) -> None:
    with h5py.File(path, "r+") as fh:
        if value is None:
            del fh.attrs[A.PRESET]
        else:
            fh.attrs[A.PRESET] = value


def test_every_stage_records_its_preset(tiny_world):
    for p in (tiny_world.rollouts, tiny_world.vae, tiny_world.series, tiny_world.mdn):
        assert A.validate(p).preset == "tiny", p


def test_a_stage_takes_the_preset_its_inputs_were_made_with(tiny_world, wm, tmp_path):
    out = tmp_path / "c.h5"
    res = wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", out, "--device", "cpu")
    assert res.code == 0, res.err
    meta = A.validate(out, "controller")
    assert meta.preset == "tiny" and meta.config["evolve"]["generations"] == 3  # tiny's, not paper's 1800
    assert meta.command["argv"][:1] == ["evolve"] and meta.command["cwd"] == os.getcwd()


def test_inputs_of_different_presets_are_refused_unless_preset_is_given(tiny_world, wm, tmp_path):
    mdn = tmp_path / "mdn.h5"
    shutil.copy(tiny_world.mdn, mdn)
    _set_preset(mdn, "small")
    res = wm("evolve", "--vae", tiny_world.vae, "--mdn", mdn, "--out", tmp_path / "c.h5", "--device", "cpu")
    assert res.code == 2 and "different presets" in res.err and res.err.count("\n") == 1
    assert not (tmp_path / "c.h5").exists()
    res = wm("evolve", "--vae", tiny_world.vae, "--mdn", mdn, "--out", tmp_path / "c.h5", "--device", "cpu",
             "--preset", "tiny")
    assert res.code == 0, res.err


def test_an_input_without_a_recorded_preset_needs_preset(tiny_world, wm, tmp_path):
    series = tmp_path / "series.h5"
    shutil.copy(tiny_world.series, series)
    _set_preset(series, None)
    assert A.validate(series).preset == ""
    res = wm("train-mdn", "--series", series, "--out", tmp_path / "m.h5", "--device", "cpu")
    assert res.code == 2 and "records no preset" in res.err and res.err.count("\n") == 1


def _evolved(tiny_world, folder, wm):
    """A folder with V, M and a controller evolved from them by `wm evolve`, run from inside the folder."""
    folder.mkdir()
    for name in ("vae.h5", "mdn.h5"):
        shutil.copy(getattr(tiny_world, name[:-3]), folder / name)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        res = wm("evolve", "--vae", "vae.h5", "--mdn", "mdn.h5", "--out", "c.h5", "--device", "cpu",
                 "--generations", "1")
    finally:
        os.chdir(cwd)
    assert res.code == 0, res.err
    return folder / "c.h5"


def test_inputs_are_found_beside_a_moved_artifact(tiny_world, wm, tmp_path):
    c = _evolved(tiny_world, tmp_path / "run", wm)
    rec = A.validate(c).inputs["vae"]
    assert os.path.isabs(rec["path"]) and rec["relative"] == "vae.h5"
    shutil.move(tmp_path / "run", tmp_path / "moved")  # the recorded absolute paths are gone
    res = wm("evaluate", "--controller", tmp_path / "moved/c.h5", "--episodes", "2")
    assert res.code == 0, res.err
    os.rename(tmp_path / "moved/vae.h5", tmp_path / "moved/v-renamed.h5")  # found by its checksum
    assert wm("evaluate", "--controller", tmp_path / "moved/c.h5", "--episodes", "2").code == 0
    os.remove(tmp_path / "moved/v-renamed.h5")
    res = wm("evaluate", "--controller", tmp_path / "moved/c.h5", "--episodes", "2")
    assert res.code == 2 and "vae" in res.err and "missing" in res.err


def test_a_changed_input_beside_the_artifact_is_refused(tiny_world, wm, tmp_path):
    c = _evolved(tiny_world, tmp_path / "run", wm)
    shutil.copy(tiny_world.rollouts, tmp_path / "run/vae.h5")
    res = wm("evaluate", "--controller", c, "--episodes", "2")
    assert res.code == 2 and "checksum differs" in res.err


def test_rerun_repeats_the_command_and_reproduces_the_artifact(tiny_world, wm, tmp_path):
    first, again = tmp_path / "m.h5", tmp_path / "again.h5"
    res = wm("train-mdn", "--series", tiny_world.series, "--out", first, "--steps", "6", "--device", "cpu")
    assert res.code == 0, res.err
    shown = wm("rerun", first, "--show")
    assert shown.code == 0 and f"wm train-mdn --series {tiny_world.series}" in shown.out
    res = wm("rerun", first, "--out", again)
    assert res.code == 0, res.err
    with h5py.File(first) as a, h5py.File(again) as b:
        for k in a[A.WEIGHTS]:
            assert np.array_equal(a[A.WEIGHTS][k][()], b[A.WEIGHTS][k][()]), k
    made = A.validate(first).command["argv"]  # the rerun records the command it ran, not `wm rerun`
    assert A.validate(again).command["argv"] == [str(again) if a == str(first) else a for a in made]


def test_rerun_of_an_artifact_made_from_python_is_refused(tiny_world, wm):
    res = wm("rerun", tiny_world.mdn)  # the session fixture called the stage functions directly
    assert res.code == 2 and "records no wm command" in res.err and res.err.count("\n") == 1


@pytest.mark.parametrize("args", [[], ["-h"]])
def test_help_lists_the_commands_in_pipeline_order(wm, args):
    res = wm(*args, "--help") if args == [] else wm(*args)
    listed = [line.split()[0] for line in res.out.split("Commands:")[1].splitlines() if line.strip()]
    # C by CMA-ES or by the actor-critic, then the real game
    assert listed[:7] == ["collect", "train-vae", "encode", "train-mdn", "evolve", "train-controller", "evaluate"]
    assert set(listed) >= {"rerun", "info", "report", "dream", "iterate", "demo", "compare", "presets"}


def test_report_on_a_missing_folder_is_an_error(wm, tmp_path):
    res = wm("report", "--data", tmp_path / "nope", "--out", tmp_path / "r.md")
    assert res.code == 2 and "no such data folder" in res.err and not (tmp_path / "r.md").exists()
