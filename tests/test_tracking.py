"""Experiment tracking: TensorBoard event files read back with TensorBoard's own reader equal the metrics JSONL
(values, steps, header, pictures, a resume's redone steps once); W&B through a fake `wandb` module (the calls) and,
where wandb is installed, a real offline run read back from its run file; the JSONL format (header records, NaN as
null, rate keys); encode, evaluate and dream write metrics."""

from __future__ import annotations

import json
import math
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from worldmodels_cli import plots, tracking
from worldmodels_cli.config import DreamConfig, IterateConfig, preset
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ConfigError
from worldmodels_cli.stages import dream, encode, evaluate, iterate, train_mdn
from worldmodels_cli.store.metrics import MetricsWriter, metrics_path

pytest.importorskip("tensorboard")  # `make install` installs it (setup.cfg extra `tensorboard`)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEP_KEYS = {"collect": "collect/episode", "train-mdn": "step", "evolve": "generation"}


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _expected(records: list[dict], step_key: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per tag, as a tracker must see the JSONL: numbers but the time, the step and seeds."""
    out: dict[str, list] = {}
    step = None
    for r in records:
        step = r.get(step_key, step)
        for k, v in r.items():
            if k not in ("time", step_key) and not k.endswith("seed") and isinstance(v, (int, float)):
                out.setdefault(k, []).append((int(step), float(v)))
    return out


def _assert_mirrors(acc: EventAccumulator, records: list[dict], step_key: str) -> None:
    want = _expected(records, step_key)
    assert set(acc.Tags()["scalars"]) == set(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag  # every step once, in order
        np.testing.assert_allclose(
            [v for _, v in got], np.float32([v for _, v in points]), rtol=1e-6, err_msg=tag
        )


def _header_text(acc: EventAccumulator) -> list[dict]:
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("header")]
    return [json.loads(t) for t in texts]  # an indented code block: JSON once the indentation is ignored


@pytest.mark.parametrize("stage", ["collect", "train-mdn", "evolve"])
def test_tensorboard_holds_what_the_jsonl_holds(stage, tiny_world, tmp_path, wm):
    out = tmp_path / "out.h5"
    args = {
        "collect": ("collect", "--env", "doom", "--preset", "tiny", "--episodes", "3"),
        "train-mdn": ("train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--device", "cpu"),
        "evolve": ("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--preset", "tiny"),
    }[stage]
    res = wm(*args, "--out", out, "--track", "tensorboard")
    assert res.code == 0, res.err
    writer = MetricsWriter(metrics_path(out))
    acc = _events(tmp_path / "runs" / "out")  # runs/ beside the artifact, named after it
    _assert_mirrors(acc, writer.read(), STEP_KEYS[stage])
    head = writer.headers()
    assert len(head) == 1 and _header_text(acc) == head
    assert head[0]["command"] == ["wm", *map(str, args), "--out", str(out), "--track", "tensorboard"]
    assert head[0]["stage"] == stage and head[0]["preset"] == "tiny" and head[0]["seed"] == 0
    assert head[0]["versions"]["worldmodels_cli"] and head[0]["device"] in ("cpu", "cuda")
    assert "config" in head[0] and head[0]["run_id"]
    if stage != "collect":
        png = {"train-mdn": "out.losses.png", "evolve": "out.fitness.png"}[stage]
        [image] = acc.Images({"train-mdn": "mdn/loss_curves", "evolve": "evolve/fitness"}[stage])
        assert image.encoded_image_string == (tmp_path / png).read_bytes()


def test_resumed_run_logs_each_step_once(tiny_world, tmp_path):
    """A run killed between checkpoints redoes its last steps: JSONL and TensorBoard both hold each step once."""
    p = preset("doom", "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(steps=10, log_steps=1, checkpoint_steps=5))
    out, rt = tmp_path / "m.h5", Runtime(device="cpu", track="tensorboard")

    def crash(step):
        if step == 8:
            raise RuntimeError("killed")  # no Ctrl-C checkpoint: the artifact holds step 5

    with pytest.raises(RuntimeError):
        train_mdn.run(p, [tiny_world.series], out, on_step=crash, runtime=rt)
    train_mdn.run(p, [tiny_world.series], out, runtime=rt)
    writer = MetricsWriter(metrics_path(out))
    records = writer.read()
    assert [r["step"] for r in records if "mdn/nll" in r] == list(range(1, 11))
    first, second = writer.headers()
    assert second["first_step"] == 6 and second["run_id"] == first["run_id"]  # one run, continued
    folder = tmp_path / "runs" / "m"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    _assert_mirrors(_events(folder), records, "step")  # steps 6-8 of the first file purged


def test_iterate_logs_each_rounds_scores_as_curves(tmp_path):
    p = preset("doom", "tiny")
    it = IterateConfig(rounds=2, controller_episodes=3, eval_episodes=2, data_eval_episodes=2)
    track = tmp_path / "tb"
    recs = iterate.run(
        p,
        tmp_path / "d",
        it,
        runtime=Runtime(seed=0, workers=1, device="cpu", track="tensorboard", track_dir=str(track)),
    )
    acc = _events(track / "iterate")
    for tag, field in (("iterate/real_mean", "real_mean"), ("iterate/dream_score", "dream_score")):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [
            (r.round, pytest.approx(getattr(r, field))) for r in recs
        ]
    # with --track-dir every round's stages keep their own runs, as their artifacts do
    assert {q.name for q in (track / "round1").iterdir()} >= {
        "rollouts",
        "series",
        "mdn",
        "controller",
        "eval",
    }
    assert _events(track / "round0" / "vae").Images("vae/reconstructions")


def test_jsonl_format(tmp_path):
    w = MetricsWriter(tmp_path / "x.metrics.jsonl")
    w.begin({"stage": "t", "config": {"taus": (1.5, 0.8), "lo": float("-inf")}})
    w.write({"step": 1, "a/x": float("nan"), "a/y": np.float32(2.5), "a/z": float("inf")})
    w.write({"step": 2, "a/x": 1.0})
    lines = (tmp_path / "x.metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["header"] == {"stage": "t", "config": {"taus": [1.5, 0.8], "lo": None}}
    assert json.loads(lines[1]) | {"time": 0} == {"time": 0, "step": 1, "a/x": None, "a/y": 2.5, "a/z": None}
    assert "NaN" not in lines[1] and '"nan"' not in lines[1]  # strict JSON
    # readers: metric records only; a resume's truncation keeps the header; plots skip null
    assert [r["step"] for r in w.read()] == [1, 2] and len(w.read(headers=True)) == 3
    w.truncate_after("step", 1)
    assert [r.get("step") for r in w.read(headers=True)] == [None, 1] and w.headers()[0]["stage"] == "t"
    w.write({"step": 2, "a/x": 3.0})
    assert plots.loss_curves(w.read(), ["a/x"], tmp_path / "x.png") is not None  # the null at step 1 dropped


def test_no_rate_key_reads_as_a_namespace(tiny_world, tmp_path):
    """`frames/s` would be a `frames` namespace holding `s` to TensorBoard and W&B."""
    p = preset("doom", "tiny")
    train_mdn.run(p, [tiny_world.series], tmp_path / "m.h5", runtime=Runtime(device="cpu"))
    keys = set().union(*MetricsWriter(metrics_path(tmp_path / "m.h5")).read())
    assert "mdn/steps_per_s" in keys
    assert not [k for k in keys if k.endswith("/s")]
    for jsonl in tiny_world.root.glob("*.metrics.jsonl"):  # every stage the session fixture ran
        assert not [k for r in MetricsWriter(jsonl).read() for k in r if k.endswith("/s")], jsonl


def test_encode_evaluate_and_dream_write_metrics(tiny_world, tmp_path):
    rt = Runtime(seed=0, device="cpu", workers=1)
    s = tmp_path / "s.h5"
    res = encode.run([tiny_world.rollouts], tiny_world.vae, s, runtime=rt)
    recs = MetricsWriter(metrics_path(s)).read()
    assert sum(r["encode/block_frames"] for r in recs if "encode/block" in r) == res.frames
    assert recs[-1]["encode/frames"] == res.frames and recs[-1]["encode/episodes"] == res.episodes

    p = preset("doom", "tiny")
    e = tmp_path / "e.h5"
    ev = evaluate.run(e, policy="random", preset=p, episodes=3, runtime=rt)
    recs = MetricsWriter(metrics_path(e)).read()
    assert [r["evaluate/return"] for r in recs if "evaluate/episode" in r] == ev.returns.tolist()
    assert recs[-1]["evaluate/mean"] == pytest.approx(ev.mean)
    # no eval artifact: the metrics go beside the video
    evaluate.run(None, policy="random", preset=p, episodes=1, video=tmp_path / "v.gif", runtime=rt)
    assert MetricsWriter(tmp_path / "v.metrics.jsonl").read()[0]["evaluate/episode"] == 0

    d = tmp_path / "d.gif"
    dr = dream.run(
        DreamConfig(episodes=2, max_steps=20),
        tiny_world.vae,
        tiny_world.mdn,
        d,
        runtime=rt.replace(track="tensorboard"),
    )
    writer = MetricsWriter(metrics_path(d))
    assert [r["dream/length"] for r in writer.read() if "dream/episode" in r] == dr.lengths
    assert writer.headers()[0]["stage"] == "dream"
    [gif] = _events(tmp_path / "runs" / "d").Images("dream/rollouts")  # the GIF, animated in TensorBoard
    assert gif.encoded_image_string == d.read_bytes()


def test_unknown_or_missing_tracker_is_one_line(tiny_world, tmp_path, wm, monkeypatch):
    out = tmp_path / "m.h5"
    res = wm(
        "train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--out", out, "--track", "mlflow"
    )
    assert res.code == 2 and "--track" in res.err and res.err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    res = wm("train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--out", out, "--track", "wandb")
    assert res.code == 2 and "pip install 'worldmodels_cli[wandb]'" in res.err and res.err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ConfigError, match="track must be one of"):
        Runtime(track="mlflow")


# --------------------------------------------------------------------------------------------------- W&B
class _FakeRun:
    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.config = types.SimpleNamespace(update=lambda d, **kw: calls.append(("config", d, kw)))

    def define_metric(self, name, **kw):
        self.calls.append(("define_metric", name, kw))

    def log(self, data):
        self.calls.append(("log", data))

    def finish(self):
        self.calls.append(("finish",))


def _fake_wandb(monkeypatch) -> list:
    calls: list = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or _FakeRun(calls)
    fake.Settings = lambda **kw: ("settings", kw)
    fake.Image = lambda path: ("image", path)
    fake.Video = lambda path: ("video", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return calls


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc


def test_wandb_gets_the_records_offline_without_a_login(tiny_world, tmp_path, monkeypatch, no_login):
    calls = _fake_wandb(monkeypatch)
    out = tmp_path / "m.h5"
    train_mdn.run(
        preset("doom", "tiny"), [tiny_world.series], out, runtime=Runtime(device="cpu", track="wandb")
    )
    writer = MetricsWriter(metrics_path(out))
    [head] = writer.headers()
    (_, init), *rest = calls
    assert init["mode"] == "offline" and init["id"] == head["run_id"] and init["resume"] == "allow"
    assert init["name"] == str(out.with_suffix("")) and init["dir"] == str(tmp_path / "runs")
    assert init["reinit"] == "create_new"  # wm iterate holds its own run while each stage opens one
    assert ("define_metric", "*", {"step_metric": "step"}) in rest
    assert [c for c in rest if c[0] == "config"] == [("config", head, {"allow_val_change": True})]
    logged = [c[1] for c in rest if c[0] == "log"]
    want = [
        {"step": r["step"], **{k: v for k, v in r.items() if k not in ("time", "step")}}
        for r in writer.read()
    ]
    assert logged[:-1] == want
    assert logged[-1] == {"step": 10, "mdn/loss_curves": ("image", str(tmp_path / "m.losses.png"))}
    assert rest[-1] == ("finish",)


def test_wandb_mode_follows_the_environment_or_a_login(tiny_world, tmp_path, monkeypatch, no_login):
    calls = _fake_wandb(monkeypatch)
    p = preset("doom", "tiny")
    p = p.replace(evolve=p.evolve.replace(generations=1))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    evaluate.run(tmp_path / "e1.h5", policy="random", preset=p, episodes=1, runtime=Runtime(track="wandb"))
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    evaluate.run(tmp_path / "e2.h5", policy="random", preset=p, episodes=1, runtime=Runtime(track="wandb"))
    assert [c[1]["mode"] for c in calls if c[0] == "init"] == [None, "online"]  # None: wandb reads WANDB_MODE


def _wandb_records(run_file: Path) -> list:
    """The records of a W&B run file: a 7-byte header, then LevelDB-log records in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, part = run_file.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768  # a block's zero-filled tail
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            part = chunk
        elif kind in (3, 4):  # middle, last
            part += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
    return out


def test_real_wandb_offline_run(tiny_world, tmp_path, no_login):
    wandb = pytest.importorskip("wandb")  # the optional extra `wandb`
    d = tmp_path / "d.gif"
    dream.run(
        DreamConfig(episodes=2, max_steps=20),
        tiny_world.vae,
        tiny_world.mdn,
        d,
        runtime=Runtime(device="cpu", track="wandb"),
    )
    wandb.teardown()  # the run file is written by W&B's service process: wait for it to finish
    [run_file] = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing sent
    records = _wandb_records(run_file)
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    jsonl = [r for r in MetricsWriter(metrics_path(d)).read() if "dream/episode" in r]
    assert [(h["dream/episode"], h["dream/length"]) for h in history if "dream/length" in h] == [
        (r["dream/episode"], r["dream/length"]) for r in jsonl
    ]
    config = {
        i.key or "/".join(i.nested_key): json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for i in r.config.update
    }
    assert config["stage"] == "dream" and math.isfinite(config["seed"])


def test_run_root():
    assert tracking.run_root("data/round0/vae.h5", Runtime()) == Path("data/round0/runs")
    assert tracking.run_root("data/vae.h5", Runtime(track_dir="tb")) == Path("tb")
