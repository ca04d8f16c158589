"""Training smoke runs: a few steps per family on a tiny CelebA folder; the app then loads and serves the result."""

from __future__ import annotations

import csv

import pytest
import torch

from app.models.checkpoint import load_checkpoint
from tests.conftest import cli, flags
from training.__main__ import main
from training.gan import epoch_lr


def run_training(family: str, data, tmp_path, **options: object):
    """Train ``family`` for a few steps; ``options`` come last, so they override (argparse keeps the last value)."""
    out = tmp_path / "weights" / f"{family}.safetensors"
    main(
        [
            *cli(
                family, data=data, out=out, run_dir=tmp_path / "run", image_size=16, batch_size=4, epochs=2, threads=1
            ),
            *flags(**options),
        ]
    )
    return out, tmp_path / "run"


def read_log(run_dir):
    with open(run_dir / "losses.csv") as handle:
        return list(csv.DictReader(handle))


def test_vae_training_writes_checkpoint_logs_and_grids(tiny_celeba, tmp_path):
    out, run = run_training("vae", tiny_celeba, tmp_path, widths=[4, 8], latent_dim=6)
    checkpoint = load_checkpoint(out)
    assert checkpoint.family == "vae" and checkpoint.preprocess.size == 16
    assert 0 < checkpoint.metrics["valid_mse"] < 4 and checkpoint.metrics["valid_images"] == 6
    assert checkpoint.training["epochs"] == 2 and checkpoint.training["train_images"] == 18
    rows = read_log(run)
    assert len(rows) == 2 * (18 // 4) and set(rows[0]) == {"epoch", "step", "loss", "mse", "kl"}
    assert (run / "curves.png").exists() and (run / "samples_epoch002.png").exists()


def test_dcgan_training_and_serving(tiny_celeba, tmp_path, make_client):
    out, run = run_training("dcgan", tiny_celeba, tmp_path, latent_dim=8, g_width=4, d_width=4, max_steps=3)
    rows = read_log(run)
    assert len(rows) == 3 and {"loss_d_real", "loss_d_fake", "acc_real", "acc_fake", "loss_g"} <= set(rows[0])
    assert all(0 <= float(row["acc_real"]) <= 1 for row in rows)
    client = make_client(weights_dir=out.parent)
    response = client.post("/generate/dcgan", json={"n": 4, "seed": 1, "format": "json"})
    assert response.status_code == 200 and len(response.json()["images"]) == 4
    assert client.get("/models/dcgan").json()["training"]["steps"] == 3


def test_training_is_reproducible_with_a_seed(tiny_celeba, tmp_path):
    first, _ = run_training("vae", tiny_celeba, tmp_path / "a", widths=[4, 8], latent_dim=6, max_steps=2)
    second, _ = run_training("vae", tiny_celeba, tmp_path / "b", widths=[4, 8], latent_dim=6, max_steps=2)
    assert load_checkpoint(first).metrics == load_checkpoint(second).metrics


def test_cli_refuses_unknown_family(capsys):
    with pytest.raises(SystemExit):
        main(cli("stylegan", data="x", out="y"))
    assert "invalid choice: 'stylegan'" in capsys.readouterr().err


def test_vae_fit_prior_upgrades_a_checkpoint_without_one(tiny_celeba, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out, _ = run_training("vae", tiny_celeba, tmp_path, widths=[4, 8], latent_dim=6, max_steps=2)
    trained = load_checkpoint(out)
    assert not torch.equal(trained.model.prior_scale_tril, torch.eye(6)), "training fits the prior"
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    old = {k: v for k, v in load_file(out).items() if not k.startswith("prior_")}
    save_file(old, str(out), metadata=metadata)  # as written before the prior existed
    main(cli("vae-fit-prior", out, data=tiny_celeba, threads=1))
    refitted = load_checkpoint(out)
    assert torch.allclose(refitted.model.prior_scale_tril, trained.model.prior_scale_tril, atol=1e-3)
    assert refitted.metrics["valid_mse"] == trained.metrics["valid_mse"]
    assert refitted.metrics["sampling_prior"].startswith("gaussian fitted to 18")


def test_batchnorm_recalibration_matches_the_generators_own_statistics(tmp_path):
    from app.models import build_model
    from app.models.checkpoint import save_checkpoint
    from app.models.preprocess import PreprocessSpec
    from tests.conftest import TINY_CONFIGS

    torch.manual_seed(0)
    model = build_model("dcgan", TINY_CONFIGS["dcgan"])
    first_norm = model.net[1]
    first_norm.running_mean.fill_(5.0)  # statistics that belong to some other weights
    path = save_checkpoint(tmp_path / "dcgan.safetensors", model, preprocess=PreprocessSpec(size=16), dtype=None)
    main(cli("gan-recalibrate", path, batches=8, threads=1))
    recalibrated = load_checkpoint(path)
    assert recalibrated.metrics["batchnorm_recalibrated"] is True
    norm = recalibrated.model.net[1]
    # The first layer's pre-BN activations of N(0, I) noise have mean ~0: the stale 5.0 is gone.
    assert norm.running_mean.abs().max() < 0.5 and norm.momentum == 0.1
    with pytest.raises(SystemExit, match="only dcgan"):
        other = build_model("vae", TINY_CONFIGS["vae"])
        main(
            cli(
                "gan-recalibrate",
                save_checkpoint(tmp_path / "vae.safetensors", other, preprocess=PreprocessSpec(size=16)),
                threads=1,
            )
        )


def test_a_resumed_gan_run_takes_the_same_steps_as_an_uninterrupted_one(tiny_celeba, tmp_path):
    options = dict(
        data=tiny_celeba,
        image_size=16,
        batch_size=4,
        threads=1,
        latent_dim=8,
        g_width=4,
        d_width=4,
        attributes=["Male", "Smiling"],
        ema=0.9,
        fake_labels="shuffled",
    )
    whole, stopped = tmp_path / "whole.safetensors", tmp_path / "stopped.safetensors"
    main(cli("acgan", **options, out=whole, run_dir=tmp_path / "whole", epochs=3))
    main(cli("acgan", **options, out=stopped, run_dir=tmp_path / "stopped", epochs=1))
    assert load_checkpoint(stopped).training["epochs"] == 1
    log_path = tmp_path / "stopped" / "losses.csv"
    last_row = log_path.read_text().splitlines()[-1].split(",")
    # A run stopped mid-epoch has logged steps its saved state does not hold: the continued run takes them again.
    log_path.write_text(log_path.read_text() + ",".join(["2", str(int(last_row[1]) + 1), *last_row[2:]]) + "\n")
    main(cli("acgan", **options, out=stopped, run_dir=tmp_path / "stopped", epochs=3, resume=True))

    expected, resumed = load_checkpoint(whole), load_checkpoint(stopped)
    assert resumed.training["epochs"] == 3 and resumed.training["steps"] == expected.training["steps"]
    for name, tensor in expected.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert read_log(tmp_path / "stopped") == read_log(tmp_path / "whole")  # the log goes on, not over


def test_resume_without_a_training_state_says_where_it_looked(tiny_celeba, tmp_path):
    with pytest.raises(SystemExit, match="no training state at .*train_state.safetensors"):
        run_training("dcgan", tiny_celeba, tmp_path, latent_dim=8, g_width=4, d_width=4, resume=True)


def test_epoch_lr_falls_linearly_after_the_decay_epoch():
    assert [epoch_lr(0.3, epoch, 5, None) for epoch in range(1, 6)] == [0.3] * 5
    assert [epoch_lr(0.3, epoch, 5, 2) for epoch in range(1, 6)] == pytest.approx([0.3, 0.3, 0.225, 0.15, 0.075])


def test_lr_decay_after_sets_both_optimizers_rates_each_epoch(tiny_celeba, tmp_path, monkeypatch):
    rates = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    out, _ = run_training("dcgan", tiny_celeba, tmp_path, latent_dim=8, g_width=4, d_width=4, lr=0.01, lr_decay_after=0)
    # 2 epochs, decaying from the start: epoch 1 takes 2/3 of the rate, epoch 2 1/3; G and D alike.
    half = len(rates) // 2
    assert rates[:half] == pytest.approx([0.01 * 2 / 3] * half) and rates[half:] == pytest.approx([0.01 / 3] * half)
    options = load_checkpoint(out).training["options"]
    assert options["lr_decay_after"] == 0 and options["lr"] == 0.01 and options["g_width"] == 4
    with pytest.raises(SystemExit, match=r"--lr-decay-after must be in \[0, --epochs\), got 2 with --epochs 2"):
        run_training("dcgan", tiny_celeba, tmp_path, lr_decay_after=2)


def test_code_version_is_the_commit_the_run_started_from(monkeypatch):
    """A commit made while a long run trains must not relabel the run's later checkpoints."""
    import subprocess

    from training import runtime

    heads = iter(["1111111\n", "2222222\n"])
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=next(heads), stderr="")
    )
    runtime.code_version.cache_clear()
    try:
        assert runtime.code_version() == "1111111"
        assert runtime.code_version() == "1111111"  # asked again later: still the start's commit
    finally:
        runtime.code_version.cache_clear()
