"""The GPU acceptance check: ``make gpu-check`` on a host with one CUDA GPU, in under 5 minutes, offline.

Checks, each a section of one JSON report (``--out``, default ``gpu_check.json``):

- ``service``: the app on ``cuda`` with every checkpoint in ``--weights``: ``/ready`` 200, the device in ``/models``,
  one request to every POST route (a route without a request here fails the check, so new routes are noticed).
- ``determinism``: per sampling family, 16 seeded requests run one by one and as one batch of 16 on the GPU, and as
  a batch on the CPU; 8-bit images compared (tolerances in ``TOLERANCES``, the counts are reported either way).
- ``glow_round_trip``: encode-decode of real faces on the GPU: largest error and 8-bit pixels changed.
- ``detector``: ``/classify`` with ``align=auto`` on one photo at 10 sizes: the first (cold) and a warm latency each.
- ``out_of_memory``: with the process capped to a little more memory than the models hold, a request too big for
  it must be split or refused with 503, never 500, and the service must stay healthy.
- ``throughput``: per sampling family, raw images/s (pipeline forwards of 64) and served images/s (8 clients).
- ``torchrun``: a one-process NCCL group with DDP, and a DCGAN trained 2 epochs straight and 1 + 1 with
  ``--resume`` under ``--deterministic``: the two must end with identical weights.

Exit status 0 when every section passed, 1 otherwise, 2 when there is no usable CUDA device (nothing is run).
The service's Python packages must be importable: ``make gpu-wheels`` (on a networked machine) downloads them as
Python 3.12 wheels, and ``make gpu-check`` installs them offline. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (after the path: the check runs from a bare checkout)

FACES = sorted((ROOT / "tests" / "data" / "faces").glob("*.jpg"))
PHOTO = ROOT / "tests" / "data" / "photos" / "astronaut.jpg"
# Seeded images: the docs promise byte-identical images in any batch; on a GPU, kernels chosen per batch size may
# still differ in their last float bits, so a few values one 8-bit level off are tolerated and reported. Against
# the CPU (other kernels, other summation orders) a little more.
TOLERANCES = {
    "batch": {"max_levels": 1, "max_fraction_changed": 0.001},
    "cpu": {"max_levels": 2, "max_fraction_changed": 0.01},
    "glow_round_trip": {"max_error": 1e-3, "max_pixels_changed": 0},
}
DETECTOR_SIZES = [
    (160, 120),
    (240, 320),
    (320, 240),
    (480, 640),
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 960),
    (1600, 1200),
    (2048, 1536),
]


def cuda_problem() -> str | None:
    """Why this check cannot run here, or None when a CUDA device is usable."""
    if torch.cuda.is_available():
        return None
    from app.services.device import cuda_unusable_reason

    return f"it needs a CUDA GPU, and CUDA is not usable here: {cuda_unusable_reason()}"


def missing_packages() -> list[str]:
    """The service's packages that cannot be imported (install them from ``make gpu-wheels``'s folder)."""
    import importlib.util

    modules = [
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
        "pydantic_settings",
        "multipart",
        "PIL",
        "safetensors",
        "prometheus_client",
        "httpx",
    ]
    return [name for name in modules if importlib.util.find_spec(name) is None]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings), a no-op on the CPU (where the check's logic is tested)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eight_bit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.int16)


def compare(a: torch.Tensor, b: torch.Tensor, tolerance: dict[str, float]) -> dict[str, Any]:
    """8-bit comparison of two image batches against a tolerance: largest difference, share of values changed."""
    difference = (eight_bit(a) - eight_bit(b)).abs()
    changed = int((difference > 0).sum())
    fraction = changed / difference.numel()
    return {
        "max_levels": int(difference.max()),
        "values_changed": changed,
        "values": difference.numel(),
        "ok": int(difference.max()) <= tolerance["max_levels"] and fraction <= tolerance["max_fraction_changed"],
    }


def jpeg_bytes(path: Path, size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None:
            image = image.resize(size)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def route_requests() -> dict[str, dict[str, Any]]:
    """One request per POST route: keyword arguments of the test client's ``post``."""
    face_a, face_b = jpeg_bytes(FACES[0]), jpeg_bytes(FACES[1])
    jpeg = "image/jpeg"
    table = {
        "/generate/vae": {"json": {"n": 2, "seed": 1}},
        "/generate/dcgan": {"json": {"n": 2, "seed": 1}},
        "/generate/acgan": {"json": {"n": 2, "seed": 1, "attributes": {"Smiling": True}}},
        "/generate/infogan": {"json": {"rows": 1, "seed": 1, "code": 0}},
        "/generate/glow": {"json": {"n": 2, "seed": 1, "temperature": 0.3}},
        "/vae/reconstruct": {"files": [("images", ("a.jpg", face_a, jpeg))], "data": {"align": "none"}},
        "/glow/interpolate": {
            "files": [("face_a", ("a.jpg", face_a, jpeg)), ("face_b", ("b.jpg", face_b, jpeg))],
            "data": {"steps": "3", "align": "none"},
        },
        "/glow/manipulate": {
            "files": [("face", ("a.jpg", face_a, jpeg))],
            "data": {"attribute": "Smiling", "steps": "3", "align": "none"},
        },
        "/glow/likelihood": {"files": [("images", ("a.jpg", face_a, jpeg))], "data": {"align": "none"}},
        "/classify": {"files": [("images", ("a.jpg", face_a, jpeg))], "data": {"align": "auto"}},
    }
    return table | json_twin_requests(table)


def json_twin_requests(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The JSON twin (path + ``/json``) of every image route in ``table``, with the image route's request: the server
    builds each twin from its image route by the same rule (``app.api.representations``), and a twin takes the same
    inputs less ``format``, which no request here sends."""
    from fastapi.routing import APIRoute

    from app.api import representations, routes

    image_routes = {
        route.path
        for module in pkgutil.iter_modules(routes.__path__)
        for route in importlib.import_module(f"{routes.__name__}.{module.name}").router.routes
        if isinstance(route, APIRoute) and representations.json_model(route) is not None
    }
    return {path + representations.JSON_SUFFIX: table[path] for path in sorted(image_routes & set(table))}


def route_family(path: str) -> str:
    """The family a POST route serves: /generate/<family>, /<family>/<operation>, /classify (the classifier)."""
    parts = path.strip("/").split("/")
    if parts[0] == "classify":
        return "classifier"
    return parts[1] if parts[0] == "generate" else parts[0]


def client_for(weights: Path, device: str, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    client = TestClient(create_app(Settings(weights_dir=weights, device=device, **settings)))
    client.__enter__()
    return client


def check_service(context: dict[str, Any]) -> dict[str, Any]:
    client = context["client"]
    ready = client.get("/ready")
    models = client.get("/models").json()
    devices = {card["name"]: card["device"] for card in models}
    paths = sorted(path for path, item in client.app.openapi()["paths"].items() if "post" in item and "{" not in path)
    requests, routes = route_requests(), {}
    for path in paths:
        family = route_family(path)
        if family not in context["store"].models:
            routes[path] = {"ok": True, "skipped": f"no {family} checkpoint in this run's weights"}
            continue
        if path not in requests:
            routes[path] = {"ok": False, "detail": "no request for this route in scripts/gpu_check.py"}
            continue
        started = time.perf_counter()
        response = client.post(path, **requests[path])
        routes[path] = {
            "status": response.status_code,
            "seconds": round(time.perf_counter() - started, 4),
            "ok": response.status_code == 200,
        }
        if response.status_code != 200:
            routes[path]["detail"] = response.text[:300]
    return {
        "ready": ready.status_code,
        "loaded": ready.json().get("loaded"),
        "devices": devices,
        "routes": routes,
        "ok": ready.status_code == 200
        and bool(devices)
        and all(str(device).startswith(context["device"].type) for device in devices.values())
        and all(route["ok"] for route in routes.values()),
    }


def sampling_pipelines(store: Any) -> dict[str, Any]:
    from app.models.pipelines.base import SAMPLE

    return {family: pipeline for family, pipeline in store.pipelines.items() if SAMPLE in pipeline.capabilities}


def batched(pipeline: Any, seeds: list[int]) -> torch.Tensor:
    """The images of one request per seed, run as one batch (as the batcher concatenates them)."""
    prepared = [pipeline.prepare_samples(1, seed) for seed in seeds]
    inputs = tuple(torch.cat(parts) for parts in zip(*(p.inputs for p in prepared)))
    with torch.inference_mode():
        return pipeline.run(prepared[0].operation, inputs)[0]


def check_determinism(context: dict[str, Any]) -> dict[str, Any]:
    seeds = list(range(100, 116))
    gpu, cpu = sampling_pipelines(context["store"]), sampling_pipelines(context["cpu_store"])
    families = {}
    for family, pipeline in gpu.items():
        one_by_one = torch.cat([batched(pipeline, [seed]) for seed in seeds])
        together = batched(pipeline, seeds)
        again = batched(pipeline, seeds)
        on_cpu = batched(cpu[family], seeds)
        families[family] = {
            "batch_1_vs_16": compare(one_by_one, together, TOLERANCES["batch"]),
            "repeat_identical": bool(torch.equal(together, again)),
            "gpu_vs_cpu": compare(together, on_cpu, TOLERANCES["cpu"]),
        }
        result = families[family]
        result["ok"] = result["batch_1_vs_16"]["ok"] and result["repeat_identical"] and result["gpu_vs_cpu"]["ok"]
    return {
        "tolerances": {k: TOLERANCES[k] for k in ("batch", "cpu")},
        "families": families,
        "ok": bool(families) and all(f["ok"] for f in families.values()),
    }


def check_glow_round_trip(context: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    from app.models.preprocess import preprocess

    checkpoint = context["store"].get("glow")
    if checkpoint is None:
        return {"ok": True, "skipped": "no glow checkpoint in this run's weights"}
    images = []
    for path in FACES:
        with Image.open(path) as image:
            images.append(preprocess(image.convert("RGB"), checkpoint.preprocess))
    faces = torch.stack(images).to(context["device"])
    model = checkpoint.model
    with torch.inference_mode():
        back = model.reconstruct(faces)
    error = float((back - faces).abs().max())
    pixels = int((eight_bit(back) != eight_bit(faces)).sum())
    tolerance = TOLERANCES["glow_round_trip"]
    return {
        "faces": len(FACES),
        "max_error": error,
        "pixels_changed": pixels,
        "tolerance": tolerance,
        "ok": error <= tolerance["max_error"] and pixels <= tolerance["max_pixels_changed"],
    }


def check_detector(context: dict[str, Any]) -> dict[str, Any]:
    client, sizes = context["client"], {}
    if context["store"].get("classifier") is None:
        return {"ok": True, "skipped": "no classifier checkpoint in this run's weights (the route that detects)"}
    for width, height in DETECTOR_SIZES:
        photo = jpeg_bytes(PHOTO, (width, height))
        latencies, statuses = [], []
        for _ in range(2):
            started = time.perf_counter()
            response = client.post("/classify", files=[("images", ("p.jpg", photo, "image/jpeg"))])
            latencies.append(round(time.perf_counter() - started, 4))
            statuses.append(response.status_code)
        sizes[f"{width}x{height}"] = {"cold_s": latencies[0], "warm_s": latencies[1], "status": statuses}
    return {
        "route": "/classify align=auto",
        "sizes": sizes,
        "ok": all(set(s["status"]) <= {200, 422} for s in sizes.values()),
    }


def check_out_of_memory(context: dict[str, Any]) -> dict[str, Any]:
    """Capped to the models plus 512 MiB: 8 concurrent requests of 32 images (batched together, then split on
    failure) and one of 1,024 (too big alone: 503). Nothing may answer 500, and the service must stay healthy."""
    device, client = context["device"], context["client"]
    families = sampling_pipelines(context["store"])
    family = "glow" if "glow" in families else next(iter(families))
    body = {"seed": 1} if family == "infogan" else {"n": 32, "seed": 1}
    big_body = {"rows": 16, "seed": 1} if family == "infogan" else {"n": 1024, "seed": 1}
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.memory_allocated(device) + 512 * 2**20
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        with ThreadPoolExecutor(8) as pool:
            batch = list(
                pool.map(lambda s: client.post(f"/generate/{family}", json={**body, "seed": s}).status_code, range(8))
            )
        big = client.post(f"/generate/{family}", json=big_body)
        health = client.get("/health").status_code
        small = client.post(f"/generate/{family}", json={"seed": 2}).status_code
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    statuses = [*batch, big.status_code]
    return {
        "family": family,
        "cap_mib": round(cap / 2**20),
        "statuses": statuses,
        "big_detail": big.text[:200] if big.status_code != 200 else "",
        "health_after": health,
        "small_after": small,
        "ok": all(s in (200, 503) for s in statuses) and health == 200 and small == 200,
    }


def check_throughput(context: dict[str, Any]) -> dict[str, Any]:
    client, families = context["client"], {}
    for family, pipeline in sampling_pipelines(context["store"]).items():
        prepared = pipeline.prepare_samples(64, 0)
        with torch.inference_mode():
            pipeline(prepared)
            synchronize(context["device"])
            started, runs = time.perf_counter(), 0
            while time.perf_counter() - started < 2.0:
                pipeline(prepared)
                runs += 1
            synchronize(context["device"])
        raw = 64 * runs / (time.perf_counter() - started)
        body = {"rows": 1, "seed": 1} if family == "infogan" else {"n": 16, "seed": 1}
        per_request = 10 if family == "infogan" else 16

        def one(seed: int, family: str = family, body: dict = body) -> int:
            return client.post(f"/generate/{family}", json={**body, "seed": seed}).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(64)))
        served = per_request * statuses.count(200) / (time.perf_counter() - started)
        families[family] = {
            "raw_images_per_s": round(raw, 1),
            "served_images_per_s": round(served, 1),
            "served_statuses": sorted(set(statuses)),
        }
    return {
        "families": families,
        "ok": bool(families) and all(f["served_statuses"] == [200] for f in families.values()),
    }


def nccl_probe() -> None:
    """Run under torchrun (one process): a NCCL group, a channels_last module in DDP, three steps; prints JSON."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3)).to(device)
    module.to(memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(module, device_ids=[local_rank])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    total = torch.ones(1, device=device)
    dist.all_reduce(total)
    print(
        json.dumps(
            {
                "backend": dist.get_backend(),
                "world_size": dist.get_world_size(),
                "all_reduce": total.item(),
                "loss": loss.item(),
            }
        )
    )
    dist.destroy_process_group()


def tiny_celeba(root: Path, attribute_names: list[str], count: int = 32) -> Path:
    """The four real test faces, repeated and mirrored, in CelebA's official layout (valid: the last 8)."""
    from PIL import Image, ImageOps

    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    for index, name in enumerate(names):
        with Image.open(FACES[index % len(FACES)]) as face:
            face = face.convert("RGB")
            (ImageOps.mirror(face) if index % 8 >= 4 else face).save(images / name, quality=92)
    labels = [
        f"{name} " + " ".join("1" if (i + j) % 3 == 0 else "-1" for j in range(len(attribute_names)))
        for i, name in enumerate(names)
    ]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(count), " ".join(attribute_names), *labels, ""]))
    partition = [f"{name} {1 if i >= count - 8 else 0}" for i, name in enumerate(names)]
    (root / "list_eval_partition.txt").write_text("\n".join([*partition, ""]))
    return root


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check_torchrun(context: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    device_type = context["device"].type
    result: dict[str, Any] = {}
    nccl_ok = True
    if device_type == "cuda":
        probe = torchrun(str(Path(__file__)), "--nccl-probe")
        nccl_ok = probe.returncode == 0
        result["nccl"] = (
            json.loads(probe.stdout.strip().splitlines()[-1])
            if nccl_ok
            else {"exit": probe.returncode, "tail": probe.stderr[-400:]}
        )
        nccl_ok = nccl_ok and result["nccl"]["backend"] == "nccl"
    with tempfile.TemporaryDirectory() as folder:
        names = max((checkpoint.attributes for checkpoint in context["store"].models.values()), key=len)
        data = tiny_celeba(Path(folder) / "celeba", names)
        common = [
            "-m",
            "training",
            "dcgan",
            "--data",
            str(data),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            device_type,
            "--deterministic",
            "--g-width",
            "16",
            "--d-width",
            "16",
            "--image-size",
            "32",
            "--seed",
            "3",
        ]
        straight = Path(folder) / "straight"
        resumed = Path(folder) / "resumed"
        runs = [
            torchrun(*common, "--out", str(straight / "dcgan.safetensors"), "--run-dir", str(straight)),
            torchrun(
                *common, "--out", str(resumed / "dcgan.safetensors"), "--run-dir", str(resumed), "--stop-after", "1"
            ),
            torchrun(*common, "--out", str(resumed / "dcgan.safetensors"), "--run-dir", str(resumed), "--resume"),
        ]
        result["training_exits"] = [run.returncode for run in runs]
        if any(run.returncode for run in runs):
            result["training_tail"] = next(run.stderr[-600:] for run in runs if run.returncode)
            result["ok"] = False
            return result
        a, b = load_file(str(straight / "dcgan.safetensors")), load_file(str(resumed / "dcgan.safetensors"))
        differing = sorted(key for key in a if not torch.equal(a[key], b[key]))
        result["resume"] = {"tensors": len(a), "differing": differing[:10], "identical": not differing}
    result["ok"] = nccl_ok and result["resume"]["identical"]
    return result


SECTIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "service": check_service,
    "determinism": check_determinism,
    "glow_round_trip": check_glow_round_trip,
    "detector": check_detector,
    "out_of_memory": check_out_of_memory,
    "throughput": check_throughput,
    "torchrun": check_torchrun,
}


def run_sections(names: list[str], context: dict[str, Any]) -> dict[str, Any]:
    """Each section's result with its duration; a section that raises is reported failed and the others still run."""
    results = {}
    for name in names:
        started = time.perf_counter()
        try:
            results[name] = SECTIONS[name](context)
        except Exception as error:  # noqa: BLE001 - one broken check must not hide the others' results
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        results[name]["seconds"] = round(time.perf_counter() - started, 2)
        print(
            f"gpu_check: {name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']} s)", flush=True
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights", help="checkpoint folder to serve")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--nccl-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nccl_probe:
        nccl_probe()
        return 0
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    problem = cuda_problem()
    if problem is not None:
        print(f"gpu_check: refusing to run: {problem}", file=sys.stderr)
        return 2
    missing = missing_packages()
    if missing:
        print(
            f"gpu_check: cannot run: Python packages missing: {', '.join(missing)} (make gpu-wheels on a machine "
            "with network, then make gpu-check installs them offline)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    from app.services.device import resolve_device
    from app.services.model_store import ModelStore

    device = resolve_device("cuda")
    context: dict[str, Any] = {"device": device}
    # max_n 1024: the out-of-memory section asks for more images than a client usually may
    # Checkpoints moved out for this call (scripts/gpu_stage.sh) are missing, not failed: the families present count.
    present = [path.stem for path in sorted(args.weights.glob("*.safetensors"))]
    context["client"] = client_for(args.weights, "cuda", max_n=1024, require_all=False, required=present)
    context["store"] = context["client"].app.state.store
    context["cpu_store"] = ModelStore.from_directory(args.weights, torch.device("cpu"))
    report = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "weights": sorted(path.name for path in args.weights.glob("*.safetensors")),
        "sections": run_sections(args.sections.split(","), context),
    }
    context["client"].__exit__(None, None, None)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(section["ok"] for section in report["sections"].values())
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'passed' if report['ok'] else 'FAILED'} in {report['seconds']} s; report: {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
