"""The benchmark's peer: the same DCGAN checkpoint served by LitServe (``pip install facegen[bench]``) with LitServe's
own dynamic batching, so facegen's serving can be compared with it on the same machine and the same HTTP client.

    python -m bench.peer_litserve --checkpoint weights/dcgan.safetensors --port 8100 \\
        --max-batch-size 64 --batch-timeout 0.005 --workers 1 --device cpu [--threads 2]

API: ``POST /predict`` with JSON ``{"seed": int}`` -> one image as ``image/png`` (header ``X-Seed``). The work per
request matches facegen's ``POST /generate/dcgan {"n": 1, "seed": s, "format": "png"}``: noise drawn on the CPU
from the seed with facegen's own :func:`~app.models.sampling.draw_noise`, the forward under
``torch.inference_mode``, and the PNG from :func:`~app.imaging.grid_png` with ``nrow=8``, so a request that lands in
a batch of one gives byte-identical PNGs to facegen's. In a batch of several, the forward may differ in the last
float bits (other kernel paths), which can move a pixel by 1/255.

``GET /health`` answers 200 once the inference worker has loaded the model. LitServe runs one process tree: this
process (the launcher, which waits), a multiprocessing manager process (its request and response queues), one
*spawned* inference worker per device and ``--workers``, and one *forked* uvicorn API-server process per inference
worker. :func:`start_peer` therefore starts it in its own session and :func:`stop_peer` signals the whole group.

torch, facegen's models and imaging are imported lazily (in the inference worker), so the launcher and the API
server never load torch or start its thread pools.
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's and encode_response's annotations with
# inspect.signature to type its endpoint (body model, response class), and string annotations would break that.

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PEER_PATH = "/predict"
HEALTH_PATH = "/health"
MAX_SEED = 2**63 - 1  # app.schemas.MAX_SEED, not imported: that module is the service's and pulls in more


def peer_body(seed: int) -> dict:
    """The JSON body asking the peer for one image from ``seed`` (facegen: ``{"n": 1, "seed": seed}``)."""
    return {"seed": seed}


class PeerRequest(BaseModel):
    """Validated by FastAPI in the API-server process before the request is queued (a bad body is a 422 there and
    never reaches, or fails, a batch)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    seed: int = Field(ge=0, le=MAX_SEED)


try:
    import litserve as ls
    from starlette.responses import Response
except ImportError:  # the ``bench`` extra is not installed: the helpers above still import
    ls = None


if ls is not None:

    class DCGANPeerAPI(ls.LitAPI):
        """One PNG per request, requests batched by LitServe into one forward of the DCGAN generator."""

        def __init__(self, checkpoint: str | Path, threads: int | None = None, **kwargs: Any):
            super().__init__(api_path=PEER_PATH, **kwargs)
            self.checkpoint_path = str(checkpoint)
            self.threads = threads

        def setup(self, device):
            import torch

            from app.models.checkpoint import load_checkpoint

            if self.threads:
                torch.set_num_threads(self.threads)
            self.torch_device = torch.device(device)
            checkpoint = load_checkpoint(self.checkpoint_path, self.torch_device)
            if checkpoint.family != "dcgan":
                raise ValueError(f"{self.checkpoint_path}: a {checkpoint.family} checkpoint, the peer serves dcgan")
            self.model = checkpoint.model

        def decode_request(self, request: PeerRequest, context):
            from app.models.sampling import draw_noise, seeded_generator

            context["seed"] = request.seed
            return draw_noise(self.model.latent_shape, 1, seeded_generator(request.seed))  # (1, *latent_shape)

        def batch(self, inputs):
            import torch

            return torch.cat(inputs)  # LitServe's default would torch.stack into (B, 1, *latent_shape)

        def predict(self, noise):
            import torch

            with torch.inference_mode():
                return self.model.generate(noise.to(self.torch_device)).cpu()

        def unbatch(self, output):
            return list(output.split(1))  # (1, 3, H, W) each: what facegen encodes for n=1

        def encode_response(self, output, context) -> Response:
            from app.imaging import grid_png

            headers = {"X-Seed": str(context["seed"])}
            return Response(grid_png(output, nrow=8), media_type="image/png", headers=headers)


def build_server(
    checkpoint: str | Path,
    max_batch_size: int,
    batch_timeout_s: float,
    workers: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    fast_queue: bool = False,
):
    """The LitServer (not yet running). ``device``: cpu, cuda or cuda:N."""
    if ls is None:
        raise ImportError("litserve is not installed: pip install 'facegen[bench]'")
    api = DCGANPeerAPI(checkpoint, threads=threads, max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
    accelerator, _, index = device.partition(":")
    devices: Any = [int(index)] if index else 1  # cpu: LitServer runs workers_per_device workers on "cpu"
    return ls.LitServer(
        api, accelerator=accelerator, devices=devices, workers_per_device=workers, fast_queue=fast_queue
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_litserve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("weights/dcgan.safetensors"))
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests per forward at most")
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.005,
        help="seconds the worker collects requests for a batch (LitServe's batch_timeout)",
    )
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes per device")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads per worker (default: torch's)"
    )
    parser.add_argument(
        "--fast-queue",
        action="store_true",
        help="LitServe's ZeroMQ transport instead of its default multiprocessing-manager queues",
    )
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"no such checkpoint: {args.checkpoint}", file=sys.stderr)
        return 2
    server = build_server(
        args.checkpoint,
        args.max_batch_size,
        args.batch_timeout,
        args.workers,
        args.device,
        args.threads,
        args.fast_queue,
    )
    # SIGTERM to the launcher alone: LitServe's own graceful shutdown (it handles KeyboardInterrupt), which ends its
    # worker processes too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # generate_client_file=False: LitServe would otherwise write a client.py into the working directory.
    server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)
    return 0


# --- for the benchmark driver: start, wait for, and stop a peer subprocess ---------------------------------------


def start_peer(
    checkpoint: Path,
    port: int,
    max_batch_size: int,
    batch_timeout_s: float,
    threads: int | None,
    *,
    host: str = "127.0.0.1",
    device: str = "cpu",
    workers: int = 1,
    fast_queue: bool = False,
    timeout_s: float = 60.0,
) -> subprocess.Popen:
    """Launch ``python -m bench.peer_litserve`` in a new session (its own process group) and return once
    ``GET /health`` answers 200; on exit or timeout, stop it and raise RuntimeError with its output."""
    import httpx

    command = [
        sys.executable,
        "-m",
        "bench.peer_litserve",
        "--checkpoint",
        str(Path(checkpoint).resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--batch-timeout",
        str(batch_timeout_s),
        "--workers",
        str(workers),
        "--device",
        device,
    ]
    env = dict(os.environ)
    if threads:
        command += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)  # also bounds any OpenMP pool started before set_num_threads
    if fast_queue:
        command.append("--fast-queue")
    log = tempfile.TemporaryFile(prefix="facegen-peer-litserve-")
    repo_root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log  # type: ignore[attr-defined]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{HEALTH_PATH}"
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if process.poll() is not None:
                stop_peer(process, close_log=False)
                output = peer_output(process)
                log.close()
                raise RuntimeError(
                    f"LitServe peer exited with code {process.returncode} before it was healthy:\n{output}"
                )
            try:
                if client.get(url).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop_peer(process, close_log=False)
                output = peer_output(process)
                log.close()
                raise RuntimeError(f"LitServe peer not healthy at {url} after {timeout_s:g} s:\n{output}")
            time.sleep(0.1)


def peer_output(process: subprocess.Popen, chars: int = 4000) -> str:
    """The tail of the peer's stdout and stderr (combined)."""
    log = getattr(process, "log", None)
    if log is None or log.closed:
        return "(no output captured)"
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_peer(process: subprocess.Popen, grace_s: float = 5.0, close_log: bool = True) -> None:
    """SIGTERM the peer's whole process group (launcher, manager, inference and API-server processes), SIGKILL
    whatever is left after ``grace_s``, and reap the launcher. Safe to call twice."""
    pgid = process.pid  # start_new_session: the launcher leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_members(pgid):
            break
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)  # the group outlives its leader: orphaned workers are still in it
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    deadline = time.monotonic() + 5
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = getattr(process, "log", None)
    if close_log and log is not None and not log.closed:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
