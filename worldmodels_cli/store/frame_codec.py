"""Frames compressed once, for `wm collect`.

A rollouts artifact stores its frames in chunks of `chunk_frames` frames through HDF5's gzip filter: each chunk is
one zlib stream. Chunks cut across episodes at places no worker knows (they depend on the lengths of all the
episodes before), so a worker cannot write final chunks. It deflates each frame on its own instead, as a
raw-deflate *segment* that ends on a byte boundary (a sync flush), with the previous frame of its episode as the
preset dictionary (consecutive frames share most of their bytes), except every KEYFRAME_EVERY-th frame and the
first, which stand alone. The merge then makes each chunk from the segments as they are (pigz's scheme):

    zlib header | the chunk's frames' segments | an empty final block | Adler-32 of the chunk (combined from each
    frame's Adler-32, which the worker stored)

A segment refers back at most to its episode's previous frame, which precedes it in the chunk, except where a
chunk starts: that frame (1 in `chunk_frames`) is recompressed alone, from its bytes inflated from the keyframe
before it (at most KEYFRAME_EVERY − 1 inflates). No other frame is compressed twice and none is decompressed.

The bytes are a pure function of (frames, episode starts, chunk_frames): the same episodes make the same artifact
however many workers collected them, whether they came from shards or from an artifact being appended to.
Segments are deflated by ISA-L (the `isal` package) where it is installed, else by zlib at level 4; on Doom's
frames, against zlib level 4 over whole 64-frame chunks (the previous collect's artifact): ISA-L level 2 is
4.5x faster per frame for 12 % more bytes, zlib level 4 a little slower for 3 % more.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import queue
import struct
import threading
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

try:  # ISA-L: on Doom's frames 4.5x zlib level 4's speed, 12 % more bytes than whole chunks (benchmarks/collect.py)
    from isal import isal_zlib as _engine

    ENGINE, SEGMENT_LEVEL = "isal", 2
except ImportError:  # any deflate stream is read alike: only the speed and the exact bytes differ
    _engine, ENGINE, SEGMENT_LEVEL = zlib, "zlib", 4

LEVEL = 4  # the rollouts artifact's gzip level (artifacts.FRAME_COMPRESSION): what HDF5 records, and uses where it
# compresses itself
KEYFRAME_EVERY = 16  # a standalone frame this often: the chain a chunk start inflates stays short
FRAME_BYTES = 64 * 64 * 3
_HEADER = zlib.compress(b"", LEVEL)[:2]  # a zlib stream's header (its level bits are only informative)
_FINAL_BLOCK = b"\x03\x00"  # an empty fixed-Huffman block with BFINAL set: ends a deflate stream
_ADLER_BASE = 65521


def deflate_frame(frame, prev=None, level: int = SEGMENT_LEVEL) -> bytes:
    """One frame's raw-deflate segment (no header, no final block, byte-aligned end), against `prev` if given."""
    if prev is None:
        co = _engine.compressobj(level, _engine.DEFLATED, -15)
    else:  # any contiguous buffer: a frame's row of its episode's array is used as it is, not copied
        co = _engine.compressobj(level, _engine.DEFLATED, -15, 8, _engine.Z_DEFAULT_STRATEGY, prev)
    return co.compress(frame) + co.flush(_engine.Z_SYNC_FLUSH)


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of A + B from those of A and B and B's length (zlib's adler32_combine, which Python lacks)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    return (sum1 % _ADLER_BASE) | ((sum2 % _ADLER_BASE) << 16)


@dataclass(frozen=True)
class EncodedFrames:
    """An episode's frames (or a stretch of one), each compressed once (module doc)."""

    data: np.ndarray  # (S,) uint8: the segments back to back
    sizes: np.ndarray  # (T,) int64: each frame's segment length
    adler: np.ndarray  # (T,) uint32: each frame's Adler-32
    keyframe_every: int = KEYFRAME_EVERY
    first: int = 0  # frame 0's index in its episode (a stretch that does not start the episode)
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)]))
        if self.offsets[-1] != len(self.data) or len(self.adler) != len(self.sizes):
            raise ValueError(f"encoded frames: segment sizes sum to {self.offsets[-1]}, data holds {len(self.data)}; "
                             f"{len(self.adler)} checksums for {len(self.sizes)} frames")

    def __len__(self) -> int:
        return len(self.sizes)

    def standalone(self, k: int) -> bool:
        """Whether frame k's segment was compressed without a dictionary."""
        return k == 0 or (self.first + k) % self.keyframe_every == 0

    def segments(self, lo: int, hi: int) -> memoryview:
        """The segments of frames lo..hi-1, back to back."""
        return memoryview(self.data)[int(self.offsets[lo]):int(self.offsets[hi])]

    def raw(self, k: int) -> bytes:
        """Frame k's bytes, inflated from the standalone frame at or before it."""
        start = k
        while not self.standalone(start):
            start -= 1
        prev = None
        for j in range(start, k + 1):
            d = zlib.decompressobj(-15) if prev is None else zlib.decompressobj(-15, zdict=prev)
            prev = d.decompress(self.segments(j, j + 1)) + d.flush()
        return prev


def encode(frames: np.ndarray, *, first: int = 0, keyframe_every: int = KEYFRAME_EVERY,
           level: int = SEGMENT_LEVEL) -> EncodedFrames:
    """Compress frames (T, 64, 64, 3) uint8 of one episode, frame 0 being its frame `first` (module doc)."""
    enc = _Episode(keyframe_every, level, first)
    enc.add(frames)
    return enc.result()


class _Episode:
    """Segments of one episode as its frames come."""

    def __init__(self, keyframe_every: int, level: int, first: int = 0) -> None:
        self.keyframe_every, self.level, self.first = keyframe_every, level, first
        self.segments: list[bytes] = []
        self.adler: list[int] = []
        self.prev: memoryview | None = None

    def add(self, frames: np.ndarray) -> None:
        """The episode's next frames (T, 64, 64, 3) uint8, deflated from their rows as they lie (no copies)."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[1:] != (64, 64, 3):
            raise ValueError(f"frames of shape {frames.shape}, not (T, 64, 64, 3)")
        k0, every, first, level = len(self.segments), self.keyframe_every, self.first, self.level
        for k, row in enumerate(frames.reshape(len(frames), FRAME_BYTES), k0):
            raw = row.data
            standalone = k == 0 or (first + k) % every == 0
            self.segments.append(deflate_frame(raw, None if standalone else self.prev, level))
            self.adler.append(_engine.adler32(raw))  # ISA-L's: the same checksum, 7x zlib's speed
            self.prev = raw

    def result(self) -> EncodedFrames:
        return EncodedFrames(np.frombuffer(b"".join(self.segments), dtype=np.uint8),
                             np.array([len(s) for s in self.segments], dtype=np.int64),
                             np.array(self.adler, dtype=np.uint32), self.keyframe_every, self.first)


def build_chunk(pieces: Sequence[tuple[EncodedFrames, int, int]], chunk_frames: int, level: int = SEGMENT_LEVEL) -> bytes:
    """The stored bytes of one frames chunk (a zlib stream) from stretches (frames, lo, hi) of encoded episodes, in
    order; fewer than `chunk_frames` frames in all are zero-padded, as HDF5 pads a dataset's last chunk."""
    count = sum(hi - lo for _, lo, hi in pieces if hi > lo)
    if count > chunk_frames:
        raise ValueError(f"{count} frames for a chunk of {chunk_frames}")
    parts, adler = [_HEADER], 1
    for enc, lo, hi in pieces:
        if hi <= lo:
            continue
        if not enc.standalone(lo):  # refers to a frame outside this chunk: compress it alone
            raw = enc.raw(lo)
            parts.append(deflate_frame(raw, None, level))
            adler = adler32_combine(adler, zlib.adler32(raw), FRAME_BYTES)
            lo += 1
        parts.append(enc.segments(lo, hi))
        for a in enc.adler[lo:hi].tolist():
            adler = adler32_combine(adler, a, FRAME_BYTES)
    if count < chunk_frames:
        segment, pad_adler = _padding(chunk_frames - count, level)
        parts.append(segment)
        adler = adler32_combine(adler, pad_adler, (chunk_frames - count) * FRAME_BYTES)
    parts.append(_FINAL_BLOCK)
    parts.append(struct.pack(">I", adler))
    return b"".join(parts)


def build_chunks(episodes: Sequence[EncodedFrames], chunk_frames: int, level: int = SEGMENT_LEVEL) -> list[bytes]:
    """The stored chunks of encoded episodes back to back, cut every `chunk_frames` frames: what collect's merge
    writes (its frame writer does the same, streaming, on threads)."""
    out, pieces, fill = [], [], 0
    for enc in episodes:
        k = 0
        while k < len(enc):
            take = min(chunk_frames - fill, len(enc) - k)
            pieces.append((enc, k, k + take))
            fill, k = fill + take, k + take
            if fill == chunk_frames:
                out.append(build_chunk(pieces, chunk_frames, level))
                pieces, fill = [], 0
    if pieces:
        out.append(build_chunk(pieces, chunk_frames, level))
    return out


@functools.lru_cache(maxsize=8)
def _padding(frames: int, level: int) -> tuple[bytes, int]:
    zeros = bytes(frames * FRAME_BYTES)
    return deflate_frame(zeros, None, level), zlib.adler32(zeros)


def encode_chunk(block: np.ndarray, chunk_frames: int, level: int = SEGMENT_LEVEL) -> bytes:
    """The stored bytes of a chunk holding `block` (at most chunk_frames frames of one episode, from its start)."""
    return build_chunk([(encode(block, level=level), 0, len(block))], chunk_frames, level)


# --------------------------------------------------------------------------------------- in a worker
_STOP = object()
BLOCK_FRAMES = 16  # frames a collect worker hands the encoder at once; an episode's last block waits at its end


class StreamEncoder:
    """Compresses episodes' frames on a thread of its own as they come: zlib and ISA-L release the GIL, so the
    game's thread steps on while a frame is deflated. `add` takes a stretch of frames at once (collect hands over
    blocks of BLOCK_FRAMES: one hand-over, one wake-up of the thread, per block, not per frame) and never blocks;
    `finish(key)` waits for the episode's last frame. Frames handed to `add` must not be written to afterwards."""

    def __init__(self, keyframe_every: int = KEYFRAME_EVERY, level: int = SEGMENT_LEVEL) -> None:
        self.keyframe_every, self.level = keyframe_every, level
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def add(self, key: Hashable, frames: np.ndarray) -> None:
        """The next frames (T, 64, 64, 3) of episode `key`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="frame-encoder", daemon=True)
            self._thread.start()
        self._queue.put((key, frames))

    def finish(self, key: Hashable) -> EncodedFrames:
        """The frames added under `key` (none: an empty result), which is then forgotten."""
        if self._thread is None:
            return _Episode(self.keyframe_every, self.level).result()
        future: cf.Future = cf.Future()
        self._queue.put((key, future))
        return future.result()

    def drop(self, key: Hashable) -> None:
        """Forget the frames added under `key` (an episode discarded, or cut short by a failure)."""
        if self._thread is not None:
            self._queue.put((key, None))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put((_STOP, None))
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        episodes: dict[Hashable, _Episode] = {}
        failed: dict[Hashable, BaseException] = {}
        while True:
            key, item = self._queue.get()
            if key is _STOP:
                return
            if item is None:
                episodes.pop(key, None)
                failed.pop(key, None)
            elif isinstance(item, cf.Future):
                ep, exc = episodes.pop(key, None), failed.pop(key, None)
                if exc is not None:
                    item.set_exception(exc)
                else:
                    item.set_result((ep or _Episode(self.keyframe_every, self.level)).result())
            elif key not in failed:
                try:
                    episodes.setdefault(key, _Episode(self.keyframe_every, self.level)).add(item)
                except BaseException as exc:  # handed to finish(): a thread has no one else to tell
                    failed[key] = exc
