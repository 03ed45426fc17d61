"""Frames compressed once (store/frame_codec.py): chunks made from per-frame segments are the zlib streams HDF5's
gzip filter reads, for any cut of episodes into chunks; the encoding is a pure function of frames and episode
starts; the worker's streaming encoder equals the plain one."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import frame_codec as C


def _episode(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frames that change a little step to step (a moving block on a noisy background), as a game's do."""
    base = (np.arange(64)[:, None, None] * 3 + rng.integers(0, 4, (64, 64, 3))).astype(np.uint8)  # walls, floor
    frames = np.repeat(base[None], n, 0)
    for t in range(n):
        frames[t, (t * 3) % 56:(t * 3) % 56 + 8, 10:30] = 200 + t % 50
    return frames


@pytest.mark.parametrize("chunk", [64, 7])
def test_chunks_of_segments_read_back_through_hdf5(tmp_path, chunk):
    """Episodes of 40, 23, 1 and 70 frames: chunks start inside episodes on frames that were compressed against
    the frame before (recompressed alone), the last chunk is short (zero-padded as HDF5 pads it)."""
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, n) for n in (40, 23, 1, 70)]
    chunks = C.build_chunks([C.encode(e) for e in episodes], chunk)
    frames = np.concatenate(episodes)
    padded = np.concatenate([frames, np.zeros((-len(frames) % chunk, 64, 64, 3), np.uint8)])
    assert b"".join(zlib.decompress(c) for c in chunks) == padded.tobytes()
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        ds = A.create_frames_dataset(fh, chunk)
        ds.resize(len(frames), axis=0)
        for i, c in enumerate(chunks):
            A.write_frames_chunk(ds, i * chunk, c)
    with h5py.File(tmp_path / "f.h5", "r") as fh:
        np.testing.assert_array_equal(fh[A.FRAMES][()], frames)
        assert fh[A.FRAMES].compression == "gzip" and fh[A.FRAMES].compression_opts == C.LEVEL


def test_the_bytes_depend_only_on_frames_and_episode_starts():
    """A stretch of an episode encoded on its own (an appended artifact's tail) makes the same chunk as the
    whole episode cut there (a fresh collection), and the encoding is deterministic."""
    rng = np.random.default_rng(1)
    ep = _episode(rng, 50)
    whole = C.encode(ep)
    assert C.build_chunk([(whole, 21, 45)], 32) == C.build_chunk([(C.encode(ep[21:45], first=21), 0, 24)], 32)
    assert C.encode(ep).data.tobytes() == whole.data.tobytes()
    assert C.encode_chunk(ep[:10], 16) == C.build_chunk([(whole, 0, 10)], 16)


def test_raw_inflates_from_the_keyframe_before():
    rng = np.random.default_rng(3)
    ep = _episode(rng, 40)
    enc = C.encode(ep, first=5)
    assert [k for k in range(40) if enc.standalone(k)] == [0, 11, 27]
    for k in (0, 1, 10, 11, 12, 26, 39):
        assert enc.raw(k) == ep[k].tobytes()


def test_adler32_combine_is_zlibs():
    rng = np.random.default_rng(4)
    for n1, n2 in ((0, 5), (3, 0), (1000, 70000), (65521, 65522)):
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert C.adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)


def test_the_stream_encoder_equals_encode_and_forgets_dropped_episodes():
    rng = np.random.default_rng(5)
    a, b = _episode(rng, 30), _episode(rng, 19)
    enc = C.StreamEncoder()
    assert len(enc.finish("nothing")) == 0
    for t in range(30):  # two episodes interleaved, as lockstep steps them, and one dropped halfway
        enc.add("a", a[t:t + 1])  # one frame at a time
        if t < 19 and t % 4 == 3:
            enc.add("b", b[t - 3:t + 1])  # blocks of 4, views of the episode's array, as collect hands them over
        if t < 5:
            enc.add("c", b[t:t + 1])
    enc.add("b", b[16:19])
    enc.drop("c")
    got_a, got_b, got_c = enc.finish("a"), enc.finish("b"), enc.finish("c")
    enc.close()
    for got, ref in ((got_a, a), (got_b, b)):
        want = C.encode(ref)
        assert got.data.tobytes() == want.data.tobytes()
        np.testing.assert_array_equal(got.adler, want.adler)
    assert len(got_c) == 0


def test_a_failure_on_the_encoder_thread_reaches_finish():
    enc = C.StreamEncoder()
    enc.add("x", np.array([["not a pixel"]]))  # fails on the thread
    with pytest.raises(ValueError):
        enc.finish("x")
    enc.close()
