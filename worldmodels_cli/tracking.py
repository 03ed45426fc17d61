"""Experiment tracking: the metric records a stage writes (`store/metrics.py`) also go to TensorBoard event files or
to a W&B run, one run per artifact, named after it (`--track tensorboard|wandb`; docs/pipeline.md, "Metrics and
tracking").

The JSONL beside the artifact stays the source of truth: a tracker gets the records `MetricsWriter.write` appends
there, nothing else, plus the pictures the stage draws beside the artifact. Each invocation's records start with a
header record (command line, resolved config, preset, versions, git revision, seed, device); TensorBoard gets it
as text and hyper-parameters, W&B as the run's config.

A record's step is its `step_key` value (step, generation, episode, round), else the last step seen. A resumed
run drops from the JSONL what the lost work had logged (`truncate_after`); TensorBoard is told the same with a
SessionLog START at the first step the resumed run writes (what torch's `SummaryWriter(purge_step=)` writes), and
its readers drop every earlier event from that step on. W&B keeps every point it was sent: the steps a resumed run
redoes appear there twice.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import netrc
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .runtime import TRACKERS, Runtime
from .runtime.errors import ConfigError
from .store.metrics import HEADER, MetricsWriter

IMAGE_TYPES = {".png", ".gif", ".jpg", ".jpeg"}  # what TensorBoard's image plugin shows (a GIF animated)


def check_available(track: str) -> None:
    """A one-line ConfigError for an unknown tracker or one whose package is not installed."""
    if track not in TRACKERS:
        raise ConfigError(f"--track must be one of {', '.join(TRACKERS)}, got {track!r}")
    if track != "none" and sys.modules.get(track) is None and importlib.util.find_spec(track) is None:
        raise ConfigError(
            f"--track {track} needs the {track} package: pip install 'worldmodels_cli[{track}]'"
        )


def start(
    writer: MetricsWriter,
    artifact: str | os.PathLike,
    runtime: Runtime,
    *,
    stage: str,
    config: Any,
    step_key: str,
    first_step: int = 0,
    purge: bool = True,
) -> MetricsWriter:
    """Begin this invocation's records in `writer`: the header record, then the tracker `runtime.track` names.

    `first_step`: the first step this invocation writes. `purge`: what an earlier invocation logged from
    `first_step` on is void (a fresh start, or a resume after `truncate_after`); False where records only append."""
    check_available(runtime.track)
    earlier = writer.headers()
    run_id = earlier[-1].get("run_id") if earlier else None
    head = header(
        stage,
        artifact,
        config,
        runtime,
        run_id=run_id or uuid.uuid4().hex[:12],
        step_key=step_key,
        first_step=first_step,
    )
    tracker = None
    if runtime.track == "tensorboard":
        tracker = TensorBoard(run_root(artifact, runtime) / Path(artifact).stem, step_key, first_step, purge)
    elif runtime.track == "wandb":
        tracker = Wandb(
            run_root(artifact, runtime),
            str(Path(artifact).with_suffix("")),
            head["run_id"],
            step_key,
            first_step,
        )
    return writer.begin(head, tracker)


def run_root(artifact: str | os.PathLike, runtime: Runtime) -> Path:
    """The trackers' folder: `--track-dir`, else `runs/` beside the artifact."""
    return Path(runtime.track_dir) if runtime.track_dir else Path(artifact).parent / "runs"


def header(
    stage: str,
    artifact: str | os.PathLike,
    config: Any,
    runtime: Runtime,
    *,
    run_id: str,
    step_key: str,
    first_step: int,
) -> dict[str, Any]:
    """What made this invocation's records: the first record of each invocation, in the JSONL and the tracker."""
    from .runtime.device import resolve
    from .store.artifacts import package_versions

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    try:
        device = resolve(runtime.device)
    except ConfigError:
        device = runtime.device
    return {
        "stage": stage,
        "artifact": str(artifact),
        "run_id": run_id,
        "step_key": step_key,
        "first_step": int(first_step),
        "command": list(runtime.command) or None,
        "preset": runtime.preset,
        "config": config,  # plain JSON once MetricsWriter.begin has cleaned it
        "seed": runtime.seed,
        "device": device,
        "workers": runtime.workers,
        "backend": runtime.backend,
        "versions": package_versions(),
        "git": git_revision(),
    }


@functools.cache
def git_revision() -> str | None:
    """HEAD of the git checkout this package runs from (`-dirty` with uncommitted changes); None outside one."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:  # installed into site-packages of some other checkout
        return None
    rev = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return None if rev is None else rev + ("-dirty" if dirty else "")


def scalars(record: dict[str, Any], step_key: str) -> dict[str, float]:
    """The numbers of a metric record a tracker plots: all but the time, the step and seeds (names, not
    measurements); null (a non-finite number) is skipped."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in ("time", step_key)
        and not k.endswith("seed")
        and isinstance(v, (int, float))
        and math.isfinite(v)
    }


class _Steps:
    """The step of each record: its `step_key` value, else the last one seen."""

    def __init__(self, step_key: str, first_step: int) -> None:
        self.key, self.last = step_key, int(first_step)

    def of(self, record: dict[str, Any]) -> int:
        if isinstance(record.get(self.key), (int, float)):
            self.last = int(record[self.key])
        return self.last


# ------------------------------------------------------------------------------------------------ TensorBoard
class TensorBoard:
    """Event files in `folder`, one per invocation, appended record by record (no writer thread to close: a killed
    run has logged all it wrote). Written with TensorBoard's own protos and record framing."""

    def __init__(self, folder: Path, step_key: str, first_step: int, purge: bool) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self.pb, self.spb = event_pb2, summary_pb2
        self.steps = _Steps(step_key, first_step)
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a run's files in name order: the start time first, to the microsecond
        self.file = folder / f"events.out.tfevents.{time.time():017.6f}.{socket.gethostname()}.{os.getpid()}"
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge:
            self._write(
                event_pb2.Event(
                    wall_time=time.time(),
                    step=int(first_step),
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                )
            )

    def header(self, record: dict[str, Any]) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.metadata import create_summary_metadata

        head, step = record[HEADER], self.steps.last
        # an indented markdown code block: the TEXT tab shows the JSON as it is
        text = textwrap.indent(json.dumps(head, indent=2, sort_keys=True), "    ")
        tensor = self._tensor_proto(text)
        value = self.spb.Summary.Value(
            tag="header",
            tensor=tensor,
            metadata=create_summary_metadata(display_name="header", description=""),
        )
        self._summary(self.spb.Summary(value=[value]), step, record["time"])
        self._summary(hparams_pb(_hparams(head), trial_id=head.get("run_id")), step, record["time"])

    def record(self, record: dict[str, Any]) -> None:
        step, values = self.steps.of(record), scalars(record, self.steps.key)
        if values:
            summary = self.spb.Summary(
                value=[self.spb.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
            )
            self._summary(summary, step, record["time"])

    def image(self, tag: str, path: Path, step: int) -> None:
        if path.suffix.lower() not in IMAGE_TYPES:
            return  # a video (mp4): TensorBoard shows none without TensorFlow's video tools
        from PIL import Image

        data = path.read_bytes()
        with Image.open(path) as img:
            width, height = img.size
        picture = self.spb.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
        self._summary(
            self.spb.Summary(value=[self.spb.Summary.Value(tag=tag, image=picture)]), step, time.time()
        )

    def close(self) -> None:
        pass  # every event is on disk already

    def _tensor_proto(self, text: str):
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[text.encode()], tensor_shape=shape
        )

    def _summary(self, summary, step: int, wall_time: float) -> None:
        self._write(self.pb.Event(wall_time=wall_time, step=int(step), summary=summary))

    def _write(self, event) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        with open(self.file, "ab") as fh:
            RecordWriter(fh).write(event.SerializeToString())


def _hparams(head: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The header's config flattened (`vae_train/lr`), with the seed, preset and stage: TensorBoard's HPARAMS tab."""
    out: dict[str, Any] = {
        "stage": head.get("stage") or "",
        "seed": head.get("seed", 0),
        "preset": head.get("preset") or "",
    }

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}/", v)
        elif isinstance(node, (bool, int, float, str)):
            out[prefix.rstrip("/")] = node
        else:
            out[prefix.rstrip("/")] = json.dumps(node)  # lists, null

    walk("", head.get("config") or {})
    return out


# ------------------------------------------------------------------------------------------------------- W&B
class Wandb:
    """A W&B run per artifact (its id kept in the header records, so a resumed run continues it), offline unless
    WANDB_MODE says otherwise or a login is present: a run never reaches the network unasked."""

    def __init__(self, root: Path, name: str, run_id: str, step_key: str, first_step: int) -> None:
        import wandb

        self.wandb, self.steps = wandb, _Steps(step_key, first_step)
        mode = None if os.environ.get("WANDB_MODE") else "online" if _wandb_login() else "offline"
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "worldmodels_cli",
                dir=str(root),
                id=run_id,
                name=name,
                mode=mode,
                resume="allow",
                reinit="create_new",  # wm iterate holds its run while each stage opens its own
                settings=wandb.Settings(console="off", quiet=True, disable_git=True),
            )
        except Exception as exc:  # a bad login, an unreachable server: one line, not a traceback
            raise ConfigError(f"--track wandb: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        self.run.define_metric(step_key)
        self.run.define_metric("*", step_metric=step_key)  # x-axis: our step, not W&B's call count

    def header(self, record: dict[str, Any]) -> None:
        self.run.config.update(record[HEADER], allow_val_change=True)  # a resume may change the command line

    def record(self, record: dict[str, Any]) -> None:
        step, values = self.steps.of(record), scalars(record, self.steps.key)
        if values:
            self.run.log({self.steps.key: step, **values})

    def image(self, tag: str, path: Path, step: int) -> None:
        media = self.wandb.Image(str(path)) if path.suffix.lower() == ".png" else self.wandb.Video(str(path))
        self.run.log({self.steps.key: step, tag: media})

    def close(self) -> None:
        self.run.finish()


def _wandb_login() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
