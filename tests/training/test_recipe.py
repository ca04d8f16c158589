"""Recipes as files (training/recipes/*.toml) and numbered run folders (``python -m training run``)."""

from __future__ import annotations

import pytest

from app.models import list_families
from app.models.checkpoint import load_checkpoint
from training.__main__ import discover_trainers, main
from training.recipe import (
    RECIPE_FILE,
    RECIPES_DIR,
    RUN_DECIDES,
    RecipeError,
    load_recipe,
    next_run_dir,
    parse_set,
    read_toml,
    to_argv,
    trainer_actions,
)

discover_trainers()
RECIPES = sorted(RECIPES_DIR.glob("*.toml"))


def test_every_family_has_a_recipe():
    assert {path.stem for path in RECIPES} == set(list_families())


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_parses_and_each_key_is_an_option_of_its_trainer(path):
    family, options = load_recipe(path)  # raises on an unknown key
    assert family == path.stem
    actions = trainer_actions(family)
    assert set(options) <= set(actions) - set(RUN_DECIDES)
    # and the trainer's own parser accepts every value
    import argparse

    from training.registry import TRAINERS

    parser = argparse.ArgumentParser()
    TRAINERS[family][0](parser)
    parsed = parser.parse_args([*to_argv(family, options), "--out", "x.safetensors"])
    assert parsed.data == options["data"] and parsed.epochs == options["epochs"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_option_has_a_comment_saying_why(path):
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    undocumented = [line for line in lines[1:] if "#" not in line]  # the first is `family = ...`
    assert not undocumented


def test_the_dcgan_recipe_is_the_run_that_made_the_shipped_checkpoint():
    """Every option the recipe sets has the value the shipped checkpoint records for its run (a recipe that drifts
    from the weights it claims to reproduce fails here)."""
    import json

    from app.models.checkpoint import read_metadata

    _, recipe = load_recipe(RECIPES_DIR / "dcgan.toml")
    options = json.loads(read_metadata(RECIPES_DIR.parents[1] / "weights" / "dcgan.safetensors")["training"])["options"]
    compared = {key: value for key, value in recipe.items() if key.replace("-", "_") in options}
    assert {"g-width", "epochs", "lr-decay-after", "ema"} <= set(compared)
    assert {key: options[key.replace("-", "_")] for key in compared} == compared


def test_unknown_option_is_refused_with_the_valid_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('family = "vae"\nwidht = 3\n')
    with pytest.raises(RecipeError, match="'widht' is not an option of the vae trainer.*lambda-kl"):
        load_recipe(path)
    path.write_text('family = "vae"\nout = "x.safetensors"\n')
    with pytest.raises(RecipeError, match="decided by the run"):
        load_recipe(path)


def test_set_values_are_toml_or_strings():
    assert parse_set("epochs=2") == ("epochs", 2)
    assert parse_set("lr=1e-4") == ("lr", 1e-4)
    assert parse_set("compile=true") == ("compile", True)
    assert parse_set("widths=[4, 8]") == ("widths", [4, 8])
    assert parse_set("data=/mnt/celeba") == ("data", "/mnt/celeba")
    with pytest.raises(RecipeError):
        parse_set("epochs")


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    first = next_run_dir(tmp_path, "vae")
    second = next_run_dir(tmp_path, "dcgan")
    assert (first.name, second.name) == ("vae-00000", "dcgan-00001")
    first.rmdir()  # a deleted lower number is not taken again
    assert next_run_dir(tmp_path, "vae").name == "vae-00002"


def tiny_recipe(tmp_path, data, family="vae", **extra) -> str:
    options = {
        "vae": {"widths": [4, 8], "latent-dim": 6},
        "dcgan": {"latent-dim": 8, "g-width": 4, "d-width": 4},
    }[family] | extra
    lines = [f'family = "{family}"', f'data = "{data}"', "image-size = 16", "batch-size = 4", "epochs = 2"]
    lines += ["threads = 1", *(f"{key} = {value!r}".replace("'", '"') for key, value in options.items())]
    path = tmp_path / f"tiny-{family}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_run_trains_a_recipe_in_a_numbered_folder_and_the_checkpoint_records_it(tiny_celeba, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_celeba)
    runs = tmp_path / "runs"
    main(["run", recipe, "--runs", str(runs), "--set", "max-steps=3", "--device", "cpu"])
    folder = runs / "vae-00000"
    assert {"recipe.toml", "vae.safetensors", "losses.csv", "curves.png", "train_state.safetensors"} <= {
        path.name for path in folder.iterdir()
    }
    resolved = read_toml(folder / RECIPE_FILE)
    assert resolved["max-steps"] == 3 and resolved["device"] == "cpu" and resolved["widths"] == [4, 8]
    training = load_checkpoint(folder / "vae.safetensors").training
    assert training["recipe"]["options"] == {key: value for key, value in resolved.items() if key != "family"}
    assert training["recipe"]["source"] == recipe and training["steps"] == 3
    assert training["hardware"].startswith("CPU") and training["processes"] == 1


def test_run_refuses_a_bad_set_before_training(tiny_celeba, tmp_path):
    with pytest.raises(SystemExit, match="'epoch' is not an option"):
        main(["run", tiny_recipe(tmp_path, tiny_celeba), "--runs", str(tmp_path / "runs"), "--set", "epoch=3"])
    assert not (tmp_path / "runs").exists()
