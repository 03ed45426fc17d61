"""The one resume rule (store/runs.py): an output is this run when its config (less what may change), seed and
input checksums are this command's; otherwise it is refused in one line naming what differs."""

from __future__ import annotations

import json

import pytest

from worldmodels_cli.runtime.errors import ArtifactError
from worldmodels_cli.store import runs

CONFIG = {"env": {"name": "doom"}, "evolve": {"pop": 8, "generations": 10}, "sizes": (1, 2)}
INPUTS = {"vae": {"path": "a/v.h5", "sha256": "aa"}, "series": [{"path": "s.h5", "sha256": "ss"}]}


def test_free_settings_paths_and_tuples_do_not_count():
    a = runs.identity(CONFIG, 3, INPUTS, free=("evolve.generations",))
    more = {**CONFIG, "evolve": {"pop": 8, "generations": 50}, "sizes": [1, 2]}
    moved = {"vae": {"path": "elsewhere/v.h5", "sha256": "aa"}, "series": [{"path": "x.h5", "sha256": "ss"}]}
    assert runs.identity(more, 3, moved, free=("evolve.generations",)) == a
    runs.check_same_run("out.h5", a, a)  # no error


def test_what_differs_is_named_seed_and_env_first():
    a = runs.identity(CONFIG, 3, INPUTS)
    b = runs.identity({**CONFIG, "env": {"name": "carracing"}, "evolve": {"pop": 16, "generations": 10}}, 4,
                      {**INPUTS, "vae": {"path": "a/v.h5", "sha256": "bb"}})
    assert runs.differences(a, b) == ["seed 3 vs 4", "env.name 'doom' vs 'carracing'", "evolve.pop 8 vs 16",
                                      "inputs.vae (another file)"]
    with pytest.raises(ArtifactError) as err:
        runs.check_same_run("out.h5", a, b, hint=" (or --init it)")
    msg = str(err.value)
    assert msg.startswith("out.h5: exists from another run (seed 3 vs 4; env.name 'doom' vs 'carracing'; "
                          "evolve.pop 8 vs 16 ...: there vs this command)") and msg.endswith("(or --init it)")


def test_a_stage_without_seed_or_inputs_leaves_them_out():
    assert runs.identity({"mirror": True}, None) == {"config": {"mirror": True}}
    assert runs.differences(runs.identity({}, None, INPUTS), runs.identity({}, None, {"vae": "junk"})) == [
        "inputs.series (another file)", "inputs.vae (another file)"]


def test_a_work_folder_belongs_to_one_run(tmp_path):
    out = tmp_path / "s.h5"
    mine = runs.identity({"mirror": True, "sizes": (1, 2)}, None, INPUTS)
    parts = runs.work_folder(out, mine, "encode")
    assert parts == tmp_path / "s.h5.parts" and (parts / runs.MANIFEST).exists()
    (parts / "000-000001.h5").write_text("a finished part")
    assert runs.work_folder(out, mine, "encode") == parts  # resumed: the parts stay
    other = runs.identity({"mirror": False, "sizes": (1, 2)}, None, INPUTS)
    with pytest.raises(ArtifactError, match=r"s.h5.parts \(an unfinished encode\): exists from another run "
                                            r"\(mirror True vs False"):
        runs.work_folder(out, other, "encode")
    (parts / runs.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="an unfinished encode"):
        runs.work_folder(out, mine, "encode")
    assert (parts / "000-000001.h5").read_text() == "a finished part"  # refused, never cleared


def test_a_setting_added_later_takes_its_legacy_value_for_older_artifacts():
    """An artifact made before `env.doom_screen_flashes` existed was made without flashes: it resumes under a config
    that says off, and is refused under one that says on."""
    from worldmodels_cli.config import preset

    now = preset("doom", "small").to_dict()
    old = json.loads(json.dumps(now))
    del old["env"]["doom_screen_flashes"]
    assert now["env"]["doom_screen_flashes"] is False
    assert runs.differences(runs.identity(old, 0), runs.identity(now, 0)) == []
    paper = preset("doom", "paper").to_dict()
    old_paper = json.loads(json.dumps(paper))
    del old_paper["env"]["doom_screen_flashes"]
    assert runs.differences(runs.identity(old_paper, 0), runs.identity(paper, 0)) == ["env.doom_screen_flashes False vs True"]
