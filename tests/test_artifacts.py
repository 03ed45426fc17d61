"""The artifact schema: round trips, atomic writes, and every rejection with a one-line message."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from worldmodels_cli.config import preset
from worldmodels_cli.runtime.errors import ArtifactError
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import files


def _write_eval(path, **kw):
    with A.atomic_write(path, "eval", config=preset("doom", "tiny"), seed=3, env="doom", **kw) as fh:
        fh.create_dataset(A.RETURNS, data=np.arange(4.0))
        fh.create_dataset(A.LENGTHS, data=np.arange(4))
        fh.create_dataset(A.EPISODE_SEEDS, data=np.arange(4))
        A.set_summary(fh, {"mean": 1.5})


def test_round_trip_provenance(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    out = tmp_path / "e.h5"
    _write_eval(out, inputs=A.inputs_record({"rollouts": src}))
    meta = A.validate(out, "eval")
    assert meta.kind == "eval" and meta.seed == 3 and meta.env == "doom"
    assert meta.schema_version == A.SCHEMA_VERSION
    assert meta.config["evolve"]["pop"] == preset("doom", "tiny").evolve.pop
    assert meta.inputs["rollouts"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert {"worldmodels_cli", "torch", "gymnasium", "vizdoom"} <= set(meta.versions)
    assert meta.summary == {"mean": 1.5}
    assert meta.created
    with A.open_artifact(out, "eval") as fh:
        np.testing.assert_array_equal(fh[A.RETURNS][()], np.arange(4.0))
    assert not list(tmp_path.glob(".*tmp*")), "temp file left behind"


def test_failed_write_leaves_previous_version(tmp_path):
    out = tmp_path / "e.h5"
    _write_eval(out)
    before = out.read_bytes()
    with pytest.raises(RuntimeError), A.atomic_write(out, "eval") as fh:
        fh.create_dataset(A.RETURNS, data=np.zeros(2))
        raise RuntimeError("killed mid-write")
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not hdf5"), "not an HDF5 file"),
    ],
)
def test_rejects_non_artifacts(tmp_path, make, expected):
    p = tmp_path / "x.h5"
    make(p)
    with pytest.raises(ArtifactError, match=expected) as err:
        A.validate(p, "eval")
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg and "eval" in msg


def test_rejects_truncated(tmp_path):
    out = tmp_path / "e.h5"
    _write_eval(out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated|not an HDF5|lacks") as err:
        A.validate(out, "eval")
    assert "\n" not in str(err.value)


def test_rejects_wrong_kind_newer_schema_missing_dataset_foreign_hdf5(tmp_path):
    out = tmp_path / "e.h5"
    _write_eval(out)
    with pytest.raises(ArtifactError, match="is a eval artifact, expected a vae artifact"):
        A.validate(out, "vae")
    with h5py.File(out, "a") as fh:
        fh.attrs[A.SCHEMA] = A.SCHEMA_VERSION + 1
    with pytest.raises(ArtifactError, match="newer"):
        A.validate(out, "eval")
    with h5py.File(out, "a") as fh:
        fh.attrs[A.SCHEMA] = A.SCHEMA_VERSION
        del fh[A.LENGTHS]
    with pytest.raises(ArtifactError, match="lacks lengths"):
        A.validate(out, "eval")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as fh:
        fh["x"] = 1
    with pytest.raises(ArtifactError, match="not a worldmodels_cli artifact"):
        A.validate(foreign)


def test_output_folder_checks(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        files.check_writable(tmp_path / "missing" / "x.h5")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # root ignores permission bits
            pytest.skip("running as root: permission bits are not enforced")
        with pytest.raises(ArtifactError, match="not writable"):
            files.check_writable(ro / "x.h5")
    finally:
        ro.chmod(0o700)


def test_tree_round_trip(tmp_path):
    import torch

    tree = {
        "step": 7,
        "rng": {"state": {"state": 2**100 + 5, "inc": 3}, "bit_generator": "PCG64"},
        "betas": (0.9, 0.999),
        "opt": {"state": {"0": {"exp_avg": torch.arange(3.0), "step": torch.tensor(2.0)}}, "groups": [{"lr": 1e-3}]},
        "torch_rng": torch.get_rng_state(),
    }
    with h5py.File(tmp_path / "t.h5", "w") as fh:
        A.write_tree(fh.create_group("s"), tree)
    with h5py.File(tmp_path / "t.h5", "r") as fh:
        back = A.read_tree(fh["s"])
    assert back["step"] == 7 and back["rng"]["state"]["state"] == 2**100 + 5
    assert back["betas"] == [0.9, 0.999]
    np.testing.assert_array_equal(back["opt"]["state"]["0"]["exp_avg"], np.arange(3.0))
    assert back["opt"]["groups"] == [{"lr": 1e-3}]
    np.testing.assert_array_equal(back["torch_rng"], torch.get_rng_state().numpy())
    json.dumps(back["rng"])  # plain data, no pickled objects


def test_copy_atomic_replaces_whole_or_leaves_untouched(tmp_path):
    src, dst = tmp_path / "a.h5", tmp_path / "b.h5"
    src.write_bytes(b"new contents")
    dst.write_bytes(b"old")
    (tmp_path / ".b.h5.tmp-999999999").write_bytes(b"left by a killed copy")  # no such pid
    files.copy_atomic(src, dst)
    assert dst.read_bytes() == b"new contents" and sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]
    with pytest.raises(FileNotFoundError):
        files.copy_atomic(tmp_path / "missing.h5", dst)
    assert dst.read_bytes() == b"new contents" and sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]


def test_pictures_are_written_like_artifacts(tmp_path):
    """A PNG beside an artifact: a killed writer's temp is removed by the next write; a failed write leaves none."""
    from worldmodels_cli.plots import loss_curves, recon_grid

    frames = np.zeros((2, 64, 64, 3), np.uint8)
    (tmp_path / ".r.png.tmp-999999999").write_bytes(b"left by a killed writer")  # no such pid
    recon_grid(frames, frames, tmp_path / "r.png")
    loss_curves([{"step": 0, "vae/loss": 1.0}, {"step": 1, "vae/loss": 0.5}], ["vae/loss"], tmp_path / "l.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "r.png"]
    with pytest.raises(ValueError):
        recon_grid(frames, frames[:, :32], tmp_path / "r.png")
    with pytest.raises(OSError):
        recon_grid(frames, frames, tmp_path / "missing-folder" / "r.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "r.png"]


@pytest.mark.parametrize("command", ["train-vae", "evolve", "evaluate", "dream"])
def test_two_writers_of_one_output(command, tiny_world, tmp_path, wm):
    """A second command writing the same --out while the first runs fails in one line; the first keeps going."""
    w, out = tiny_world, tmp_path / ("out.gif" if command == "dream" else "out.h5")
    args = {"train-vae": ("--rollouts", w.rollouts, "--preset", "tiny"),
            "evolve": ("--vae", w.vae, "--mdn", w.mdn, "--preset", "tiny"),
            "evaluate": ("--policy", "random", "--env", "doom", "--preset", "tiny", "--episodes", "2"),
            "dream": ("--vae", w.vae, "--mdn", w.mdn)}[command]
    with files.output_lock(out):  # what the first command holds while it runs
        res = wm(command, *args, "--out", out)
    assert res.code == 2 and res.err == f"error: {out}: another wm command is writing it; wait for it or choose another --out\n"
    assert not out.exists()
    assert wm(command, *args, "--out", out).code == 0  # released: the lock dies with its holder


@pytest.mark.parametrize("how", ["external link", "external storage", "virtual"])
def test_data_from_another_file_is_refused(tiny_world, tmp_path, wm, how):
    """An input's checksum covers its own bytes only: an object that reads another file is refused, in one line."""
    import shutil

    bad, other = tmp_path / "r.h5", tmp_path / "other.h5"
    shutil.copy(tiny_world.rollouts, bad)
    with h5py.File(other, "w") as fh:
        fh["x"] = np.zeros(4)
    with h5py.File(bad, "a") as fh:
        if how == "external link":
            fh["extra"] = h5py.ExternalLink(str(other), "x")
        elif how == "external storage":
            (tmp_path / "raw.bin").write_bytes(np.zeros(4).tobytes())
            fh.create_dataset("extra", shape=(4,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 32)])
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(4,))
            fh.create_virtual_dataset("extra", layout)
    with pytest.raises(ArtifactError, match="extra points outside the file"):
        A.validate(bad, "rollouts")
    res = wm("encode", "--rollouts", bad, "--vae", tiny_world.vae, "--out", tmp_path / "s.h5")
    assert res.code == 2 and "points outside the file" in res.err and res.err.count("\n") == 1


def _damage(path, how: str) -> None:
    import h5py

    with h5py.File(path, "a") as fh:
        n = fh[A.REWARDS].shape[0]
        if how == "negative length":
            lengths = fh[A.EPISODE_LENGTHS][()]
            lengths[0] = -5
            fh[A.EPISODE_LENGTHS][...] = lengths
        elif how == "lengths past the end":
            lengths = fh[A.EPISODE_LENGTHS][()]
            lengths[-1] += 150
            fh[A.EPISODE_LENGTHS][...] = lengths
        elif how == "starts shorter than lengths":
            starts = fh[A.EPISODE_STARTS][()]
            del fh[A.EPISODE_STARTS]
            fh[A.EPISODE_STARTS] = starts[:-1]
        elif how == "frames as a group":
            del fh[A.FRAMES]
            fh.create_group(A.FRAMES)
        elif how == "32x32 frames":
            del fh[A.FRAMES]
            fh[A.FRAMES] = np.zeros((n, 32, 32, 3), np.uint8)
        elif how == "3-wide Doom actions":
            del fh[A.ACTIONS]
            fh[A.ACTIONS] = np.zeros((n, 3), np.float32)
        elif how == "schema_version as an array":
            fh.attrs[A.SCHEMA] = np.arange(3)
        elif how == "config a JSON list":
            fh.attrs[A.CONFIG] = "[1, 2]"


DAMAGES = ["negative length", "lengths past the end", "starts shorter than lengths", "frames as a group",
           "32x32 frames", "3-wide Doom actions", "schema_version as an array", "config a JSON list"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_rollouts_artifact_is_refused_when_opened(tiny_world, tmp_path, wm, how):
    """One check of structure and consistency where an artifact is opened, for every command that reads it."""
    import shutil

    bad = tmp_path / "r.h5"
    shutil.copy(tiny_world.rollouts, bad)
    _damage(bad, how)
    with pytest.raises(ArtifactError):
        A.validate(bad, "rollouts")
    for args in (("encode", "--rollouts", bad, "--vae", tiny_world.vae, "--out", tmp_path / "s.h5"),
                 ("train-vae", "--rollouts", bad, "--preset", "tiny", "--out", tmp_path / "v.h5"),
                 ("collect", "--env", "doom", "--preset", "tiny", "--episodes", "20", "--out", bad)):
        res = wm(*args)
        assert res.code == 2 and res.err.startswith("error: ") and res.err.count("\n") == 1, (args[0], res.err)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "v.h5").exists()
    assert not (tmp_path / "r.h5.parts").exists()
