"""generate_batch at sd15's scale (fourth review): the round's images never go to the device in one piece, the host
holds them once (as uint8 for the worker), and the images and embeddings are the same as the whole-set path's."""

from __future__ import annotations

import pytest
import torch

from seiko_core import loop
from seiko_core.config import SeikoConfig
from seiko_core.features import embed_images_batched
from seiko_core.sampling import sample

CHUNK = 64  # embed_images_batched's default chunk


def _cfg(batch_size: int) -> SeikoConfig:
    cfg = SeikoConfig()
    cfg.sampling.steps = 2
    cfg.sampling.batch_size = batch_size
    return cfg


def test_the_embedder_never_gets_more_than_a_chunk(random_parts, monkeypatch):
    """Before: one call with every image of the round, moved to the device first (48 GiB float32 at sd15 round 3)."""
    seen = []
    real = loop.embed_images_batched

    def spy(parts, images, *args, **kwargs):
        seen.append((len(images), images.device.type))
        return real(parts, images, *args, **kwargs)

    monkeypatch.setattr(loop, "embed_images_batched", spy)
    n = CHUNK + 17
    images, emb = loop.generate_batch(random_parts, None, ["a shape"] * n, list(range(n)), _cfg(8))
    assert images.shape[0] == emb.shape[0] == n
    assert sum(k for k, _ in seen) == n
    assert max(k for k, _ in seen) <= CHUNK, seen
    assert all(device == "cpu" for _, device in seen)


@pytest.mark.parametrize("batch_size", [8, 24, 100])
def test_images_and_embeddings_equal_the_whole_set_path(random_parts, batch_size):
    """The old composition, written out: sample the whole set, then embed it in one call (chunks of 64 from the
    start); generate_batch gives the same images and embeddings bit for bit, and as uint8 the same pixels a PNG of
    the float images would hold."""
    n = 2 * CHUNK + 5
    prompts, seeds = [f"shape {i % 3}" for i in range(n)], [1000 + i for i in range(n)]
    cfg = _cfg(batch_size)
    ref_images = sample(random_parts, prompts, seeds, steps=2, guidance=cfg.sampling.guidance, eta=cfg.sampling.eta,
                        batch_size=batch_size)
    ref_emb = embed_images_batched(random_parts, ref_images)

    images, emb = loop.generate_batch(random_parts, None, prompts, seeds, cfg)
    assert images.dtype == torch.float32
    assert torch.equal(images, ref_images)
    assert torch.equal(emb, ref_emb)

    pixels, emb8 = loop.generate_batch(random_parts, None, prompts, seeds, cfg, as_uint8=True)
    assert pixels.dtype == torch.uint8 and pixels.shape == ref_images.shape
    assert torch.equal(pixels, (ref_images.clamp(0, 1) * 255).round().to(torch.uint8))
    assert torch.equal(emb8, ref_emb)



def test_pixels_out_receives_the_same_pixels_and_no_traceback_keeps_it(random_parts):
    """The worker's scratch file (fifth review): with ``pixels_out`` the uint8 pixels are written into the array it
    gives, the same as in memory, and the images returned share its memory; an error mid-way leaves no reference to
    it in the traceback's frames (a memory map there held gigabytes of disk until the traceback went)."""
    import gc
    import weakref

    import numpy as np

    n = CHUNK + 9
    prompts, seeds = [f"shape {i % 3}" for i in range(n)], [50 + i for i in range(n)]
    cfg = _cfg(8)
    want, want_emb = loop.generate_batch(random_parts, None, prompts, seeds, cfg, as_uint8=True)
    given = {}

    def out(shape):
        given["array"] = np.full(shape, 7, dtype=np.uint8)
        return given["array"]

    pixels, emb = loop.generate_batch(random_parts, None, prompts, seeds, cfg, as_uint8=True, pixels_out=out)
    assert torch.equal(pixels, want) and torch.equal(emb, want_emb)
    assert np.array_equal(given["array"], want.numpy())  # written into the array given, not a copy of it
    assert pixels.data_ptr() == given["array"].ctypes.data
    assert torch.equal(loop.generate_batch(random_parts, None, prompts, seeds, cfg, as_uint8=True,
                                           pixels_out=lambda shape: None)[0], want)  # None: in memory

    with pytest.raises(ValueError, match=r"pixels_out gave a uint8 array of shape \(73, 3, \d+, \d+\), not a writable "
                                         r"float32 one"):  # float images want a float32 array
        loop.generate_batch(random_parts, None, prompts, seeds, cfg, pixels_out=out)
    with pytest.raises(ValueError, match=r"pixels_out gave a uint8 array of shape \(3,\), not a writable uint8 one"):
        loop.generate_batch(random_parts, None, prompts[:3], seeds[:3], cfg, as_uint8=True,
                            pixels_out=lambda shape: np.zeros(3, np.uint8))

    refs = []

    def tracked(shape):
        array = np.zeros(shape, dtype=np.uint8)
        refs.append(weakref.ref(array))
        return array

    def stop(done, total, info):
        if refs:  # after the first chunk was written into the array
            raise RuntimeError("stopped after the first chunk")

    with pytest.raises(RuntimeError, match="stopped after the first chunk") as info:
        loop.generate_batch(random_parts, None, prompts, seeds, cfg, on_progress=stop, as_uint8=True, pixels_out=tracked)
    gc.collect()
    assert len(refs) == 1 and info.tb is not None
    assert refs[0]() is None  # the traceback (kept in ``info``) holds no reference to the array


def test_float_pixels_out_receives_the_same_float32_images(random_parts):
    """The simulators' scratch file (sixth review): without ``as_uint8`` the float32 images are written into the
    float32 array ``pixels_out`` gives, bit for bit what the in-memory path returns (the oracles rate these values),
    and the images returned share its memory."""
    import numpy as np

    n = CHUNK + 9
    prompts, seeds = [f"shape {i % 3}" for i in range(n)], [70 + i for i in range(n)]
    cfg = _cfg(8)
    want, want_emb = loop.generate_batch(random_parts, None, prompts, seeds, cfg)
    given = {}

    def out(shape):
        given["array"] = np.full(shape, np.nan, dtype=np.float32)
        return given["array"]

    images, emb = loop.generate_batch(random_parts, None, prompts, seeds, cfg, pixels_out=out)
    assert images.dtype == torch.float32 and images.data_ptr() == given["array"].ctypes.data
    assert np.array_equal(given["array"], want.numpy()) and torch.equal(emb, want_emb)
    assert want.numpy().tobytes() == given["array"].tobytes()  # the same bits, NaN-free
