"""The benchmark's LitServe peer (bench/peer_litserve.py) serves the same PNG as facegen for a seed; its process
group is always gone afterwards. Bounded: start_peer gives up after 60 s, each request after 20 s."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("litserve")

import httpx  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from app.imaging import grid_png  # noqa: E402
from app.models.checkpoint import load_checkpoint  # noqa: E402
from app.models.sampling import draw_noise, seeded_generator  # noqa: E402
from bench.peer_litserve import PEER_PATH, _group_members, peer_body, start_peer, stop_peer  # noqa: E402
from bench.server import free_port  # noqa: E402
from tests.conftest import write_tiny_checkpoint  # noqa: E402


def facegen_png(checkpoint_path, seed: int) -> bytes:
    """What facegen's POST /generate/dcgan {"n": 1, "seed": seed} answers, computed in-process."""
    model = load_checkpoint(checkpoint_path, "cpu").model
    noise = draw_noise(model.latent_shape, 1, seeded_generator(seed))
    with torch.inference_mode():
        images = model.generate(noise)
    return grid_png(images, nrow=8)


@pytest.fixture
def peer(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path, "dcgan")
    port = free_port()
    process = start_peer(checkpoint, port, max_batch_size=8, batch_timeout_s=0.005, threads=1, timeout_s=60)
    try:
        yield checkpoint, f"http://127.0.0.1:{port}", process
    finally:
        stop_peer(process)


def test_peer_serves_facegens_png_and_stops_cleanly(peer):
    checkpoint, url, process = peer
    with httpx.Client(base_url=url, timeout=20.0, trust_env=False) as client:
        responses = [client.post(PEER_PATH, json=peer_body(seed)) for seed in (3, 3, 4)]
        bad = client.post(PEER_PATH, json={"seed": "3"})
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        Image.open(io.BytesIO(response.content)).verify()
    first, again, other = (response.content for response in responses)
    assert first == again
    assert first != other
    assert responses[0].headers["x-seed"] == "3"
    assert bad.status_code == 422  # validated in the API server, never queued for a batch
    # Sequential requests run in batches of one, like facegen's n=1: byte-identical PNGs.
    assert first == facegen_png(checkpoint, 3)
    assert other == facegen_png(checkpoint, 4)

    pgid = process.pid
    assert len(_group_members(pgid)) >= 3  # launcher, multiprocessing manager, inference worker, API server
    stop_peer(process)
    assert process.returncode is not None
    assert _group_members(pgid) == []  # no orphaned worker (zombies awaiting their reaper aside)


def test_peer_that_cannot_load_its_checkpoint_fails_with_the_reason(tmp_path):
    broken = tmp_path / "dcgan.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="(?s)exited with code.*not a readable safetensors file"):
        start_peer(broken, free_port(), max_batch_size=8, batch_timeout_s=0.005, threads=1, timeout_s=60)
