"""``python -m training speed``: steps per second of recipes under each precision setting."""

from __future__ import annotations

import json

import pytest

from training.__main__ import main


def tiny_recipe(path, data) -> str:
    path.write_text(
        "\n".join(
            [
                'family = "dcgan"',
                f'data = "{data}"',
                "image-size = 16",
                "batch-size = 4",
                "latent-dim = 8",
                "g-width = 4",
                "d-width = 4",
                "threads = 1",
            ]
        )
        + "\n"
    )
    return str(path)


def test_speed_reports_steps_per_second_for_each_setting(tiny_celeba, tmp_path):
    recipe = tiny_recipe(tmp_path / "dcgan.toml", tiny_celeba)
    out = tmp_path / "speed.json"
    main(["speed", recipe, "--steps", "3", "--warmup", "1", "--settings", "fp32,bf16", "--json", str(out)])
    report = json.loads(out.read_text())
    row = report["steps_per_second"]["dcgan"]
    assert row["batch_size"] == 4 and row["threads"] == 1
    assert row["fp32"] > 0 and row["bf16"] > 0 and row["fp32_speed_up"] == 1.0
    assert row["bf16_speed_up"] == pytest.approx(row["bf16"] / row["fp32"], abs=0.01)
    assert "bf16+channels_last" not in row and report["steps"] == 3
    assert report["command"].endswith("--steps 3 --warmup 1 --settings fp32,bf16")


def test_speed_refuses_an_unknown_setting(tiny_celeba, tmp_path):
    with pytest.raises(SystemExit, match="unknown setting.*fp8"):
        main(["speed", tiny_recipe(tmp_path / "dcgan.toml", tiny_celeba), "--settings", "fp8"])
