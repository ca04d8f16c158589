"""The GPU acceptance check's own logic, on the CPU: it refuses to run without CUDA (saying why), its request table
covers every POST route, and its sections run against a CPU service of tiny checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_CONFIGS, write_tiny_checkpoint
from tests.families.glow import write_served_tiny_glow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402  (a script, imported from its folder)


def test_it_refuses_to_run_without_cuda_and_says_why(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gpu_check: refusing to run: it needs a CUDA GPU" in err and "no GPU is visible" in err
    assert not out.exists(), "no report is written when nothing ran"


def test_unknown_sections_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--sections", "service,warp-drive"])
    assert "unknown sections ['warp-drive']" in capsys.readouterr().err


def test_the_comparison_applies_its_tolerance():
    a = torch.full((2, 3, 4, 4), -1.0)
    one_level = a.clone()
    one_level[0, 0, 0, 0] += 1 / 127.5  # one 8-bit level
    assert gpu_check.compare(a, a, gpu_check.TOLERANCES["batch"]) == {
        "max_levels": 0,
        "values_changed": 0,
        "values": 96,
        "ok": True,
    }
    result = gpu_check.compare(a, one_level, {"max_levels": 1, "max_fraction_changed": 0.001})
    assert result["max_levels"] == 1 and result["values_changed"] == 1 and not result["ok"]  # 1/96 > 0.1 %
    assert gpu_check.compare(a, one_level, {"max_levels": 1, "max_fraction_changed": 0.02})["ok"]


@pytest.fixture(scope="module")
def every_family(tmp_path_factory) -> Path:
    """Tiny checkpoints of every family; the Glow with attribute directions (its manipulate route needs them)."""
    directory = tmp_path_factory.mktemp("every-family")
    for family in TINY_CONFIGS:
        if family != "glow":
            write_tiny_checkpoint(directory, family)
    write_served_tiny_glow(directory)
    return directory


@pytest.fixture
def cpu_context(make_client, every_family):
    from app.services.model_store import ModelStore

    client = make_client(weights_dir=every_family, device="cpu", max_n=1024)
    return {
        "client": client,
        "store": client.app.state.store,
        "cpu_store": ModelStore.from_directory(every_family, torch.device("cpu")),
        "device": torch.device("cpu"),
    }


def test_the_service_section_sends_a_request_to_every_post_route(cpu_context):
    result = gpu_check.check_service(cpu_context)
    assert result["ready"] == 200 and set(result["devices"].values()) == {"cpu"}
    assert set(result["routes"]) == set(gpu_check.route_requests())
    assert result["ok"], {path: r for path, r in result["routes"].items() if not r["ok"]}


def test_a_route_the_table_does_not_know_fails_the_section(cpu_context, monkeypatch):
    table = gpu_check.route_requests()
    del table["/glow/likelihood"]
    monkeypatch.setattr(gpu_check, "route_requests", lambda: table)
    result = gpu_check.check_service(cpu_context)
    assert not result["ok"] and "no request for this route" in result["routes"]["/glow/likelihood"]["detail"]


def test_determinism_and_round_trip_sections_on_the_cpu(cpu_context):
    determinism = gpu_check.check_determinism(cpu_context)
    assert set(determinism["families"]) == {"vae", "dcgan", "acgan", "infogan", "glow"}
    for result in determinism["families"].values():
        # the "GPU" here is the CPU too: the same kernels give the same bits
        assert result["gpu_vs_cpu"]["values_changed"] == 0 and result["repeat_identical"]
        assert result["batch_1_vs_16"]["max_levels"] <= 1
    assert determinism["ok"]
    round_trip = gpu_check.check_glow_round_trip(cpu_context)
    assert round_trip["faces"] == 4 and round_trip["max_error"] < 1e-3


def test_a_failing_section_is_reported_and_the_others_still_run(monkeypatch):
    def broken(context):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu_check.SECTIONS, "detector", broken)
    monkeypatch.setitem(gpu_check.SECTIONS, "glow_round_trip", lambda context: {"ok": True})
    results = gpu_check.run_sections(["detector", "glow_round_trip"], {})
    assert results["detector"]["ok"] is False and "illegal memory access" in results["detector"]["error"]
    assert results["glow_round_trip"]["ok"] is True
    json.dumps(results)  # the report is JSON


def test_the_training_data_it_makes_is_read_by_the_trainers(tmp_path):
    from training.data import load_split

    names = [f"Attr{i}" for i in range(40)]
    root = gpu_check.tiny_celeba(tmp_path / "celeba", names)
    train, valid = load_split(root, "train"), load_split(root, "valid")
    assert (len(train), len(valid)) == (24, 8) and train.attributes.shape == (24, 40)
