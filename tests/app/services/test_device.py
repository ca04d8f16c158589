"""Device settings: each unusable device is refused at start-up with a message naming the problem (the CUDA
functions are monkeypatched to play hosts with no GPU, two GPUs, a CPU-only torch), ``cuda:N`` becomes the current
device, and the CUDA policy asks for exact float32 without autotuning."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from app.services import device as devices
from app.services.device import DeviceError, resolve_device
from app.settings import Settings


@pytest.fixture
def host(monkeypatch):
    """A host with ``gpus`` visible GPUs under a CUDA build of torch; records set_device calls."""
    chosen: list[torch.device] = []

    def configure(gpus: int, cuda_build: str | None = "13.0") -> list[torch.device]:
        monkeypatch.setattr(torch.version, "cuda", cuda_build)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(torch.device(device)))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return chosen

    return configure


@pytest.mark.parametrize("name", ["cudax", "cuda:", "cuda:x", "gpu", "CUDA", "cuda:0:1", " cpu", "cuda:-1"])
def test_settings_refuse_strings_that_are_not_devices(name):
    with pytest.raises(ValidationError, match="device must be auto, cpu, mps, cuda or cuda:N"):
        Settings(device=name)


@pytest.mark.parametrize("name", ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"])
def test_settings_accept_devices(name):
    assert Settings(device=name).device == name


def test_cuda_without_a_gpu_says_none_is_visible(host, monkeypatch):
    host(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match=r"FACEGEN_DEVICE=cuda but CUDA is not usable: no GPU is visible") as caught:
        resolve_device("cuda")
    assert "CUDA_VISIBLE_DEVICES=''" in str(caught.value) and "--gpus" in str(caught.value)


def test_cuda_on_a_cpu_only_torch_says_so(host):
    host(0, cuda_build=None)
    with pytest.raises(DeviceError, match="has no CUDA support; install a CUDA build of torch"):
        resolve_device("cuda:0")


def test_gpus_visible_but_unusable_suspects_the_driver(host, monkeypatch):
    host(2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="driver may be older than the CUDA 13.0"):
        resolve_device("cuda")


def test_an_index_beyond_the_host_names_the_gpus_it_has(host):
    host(2)
    with pytest.raises(DeviceError, match=r"FACEGEN_DEVICE=cuda:7 but this host has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:7")


def test_cuda_n_becomes_the_current_device(host):
    chosen = host(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
    assert resolve_device("cuda") == torch.device("cuda") and len(chosen) == 1  # plain cuda: the current one


def test_auto_falls_back_to_the_cpu_and_bad_names_name_the_setting(host):
    host(0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"--device='cudax': device must be"):
        resolve_device("cudax", setting="--device")


def test_the_service_does_not_start_on_a_missing_gpu_even_with_no_weights(host, make_client, tmp_path, caplog):
    """An empty weights folder used to report a "cuda" service that never touched the GPU; start-up now fails."""
    host(0)
    with pytest.raises(DeviceError, match="FACEGEN_DEVICE=cuda but CUDA is not usable"):
        make_client(weights_dir=tmp_path, device="cuda")
    assert any("cannot start" in record.message for record in caplog.records)


def test_python_m_app_exits_with_the_reason(host, capsys):
    from app.__main__ import main

    host(2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEGEN_DEVICE", "cuda:7")
        with pytest.raises(SystemExit) as exited:
            main([])
    assert exited.value.code == 2
    assert "facegen: cannot start: FACEGEN_DEVICE=cuda:7 but this host has 2 GPU(s)" in capsys.readouterr().err


def test_training_names_its_option(host):
    from training.runtime import resolve_device as training_device

    host(1)
    with pytest.raises(SystemExit, match=r"--device=cuda:3 but this host has 1 GPU\(s\)"):
        training_device("cuda:3")


@pytest.fixture
def backend_flags():
    """torch's process-wide precision and autotuning flags, restored after the test (monkeypatch cannot: they are
    properties of torch's backend modules)."""
    saved = (
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved[:2]
    torch.backends.cudnn.benchmark = saved[2]


def test_serving_policy_turns_tf32_and_autotuning_off(backend_flags):
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.benchmark = True
    assert devices.uses_tf32()
    devices.configure_for_serving(torch.device("cpu"))
    assert devices.uses_tf32(), "nothing changes for a CPU service"
    devices.configure_for_serving(torch.device("cuda", 0))
    assert not devices.uses_tf32()
    assert torch.backends.cudnn.conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.benchmark is False
