"""Shared fixtures: tiny CelebA folders in the official layout, real faces, tiny checkpoints, an app client."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.models import build_model, family_class, list_families
from app.models.checkpoint import save_checkpoint
from app.models.preprocess import PreprocessSpec

FACES_DIR = Path(__file__).parent / "data" / "faces"
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male "
    "Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


# Tiny configs, as diffusers' testers do: every family builds in milliseconds. Each family's registration carries its
# own (``@register_family(..., tiny=...)``), so a new family is in every test that runs over TINY_CONFIGS.
def tiny_configs() -> dict[str, dict]:
    """Family -> its registered tiny config, for every family registered now."""
    return {name: family_class(name).tiny_config for name in list_families()}


TINY_CONFIGS = tiny_configs()


def flags(**options: object) -> list[str]:
    """Command-line options: flags(image_size=16, fid=True, widths=(4, 8)) is ["--image-size", "16", "--fid",
    "--widths", "4,8"]; underscores become dashes, True adds a bare switch, False or None leaves the option out, a list
    or tuple is joined with commas, anything else is str()-ed."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return argv


def cli(command: str, *positional: object, **options: object) -> list[str]:
    """A `python -m training` command line: cli("glow", data=d, image_size=16) is ["glow", "--data", "d",
    "--image-size", "16"]; positional arguments follow the command, the options are those of `flags`."""
    return [command, *map(str, positional), *flags(**options)]


def make_celeba_folder(root: Path, count: int = 24, valid: int = 6, seed: int = 0) -> Path:
    """A synthetic CelebA in the official layout (CRLF lines, two image sizes, a partition row with no image)."""
    rng = random.Random(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    for index, name in enumerate(names):
        size = (178, 218) if index % 2 else (89, 109)
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", size, colour).save(images / name, quality=90)
    rows = [f"{name} " + " ".join(rng.choice(["1", "-1"]) for _ in ATTRIBUTE_NAMES) for name in names]
    (root / "list_attr_celeba.txt").write_bytes(
        "\r\n".join([str(count), " ".join(ATTRIBUTE_NAMES), *rows, ""]).encode()
    )
    partition = [f"{name} {1 if i >= count - valid else 0}" for i, name in enumerate(names)] + [
        f"{count + 1:06d}.jpg 0"
    ]
    (root / "list_eval_partition.txt").write_bytes("\r\n".join([*partition, ""]).encode())
    return root


@pytest.fixture
def tiny_celeba(tmp_path: Path) -> Path:
    return make_celeba_folder(tmp_path / "celeba")


@pytest.fixture(scope="session")
def face_paths() -> list[Path]:
    return sorted(FACES_DIR.glob("*.jpg"))


@pytest.fixture(scope="session")
def face_bytes(face_paths) -> list[bytes]:
    return [path.read_bytes() for path in face_paths]


def png_of(size: tuple[int, int], colour=(200, 120, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiny_checkpoint(directory: Path, family: str, **kwargs) -> Path:
    torch.manual_seed(0)
    model = build_model(family, TINY_CONFIGS[family])
    kwargs.setdefault("attributes", ATTRIBUTE_NAMES)
    kwargs.setdefault("preprocess", PreprocessSpec(size=model.config.image_size))
    return save_checkpoint(directory / f"{family}.safetensors", model, **kwargs)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights folder with a tiny checkpoint of every family in TINY_CONFIGS."""
    directory = tmp_path_factory.mktemp("weights")
    for family in TINY_CONFIGS:
        write_tiny_checkpoint(directory, family)
    return directory


@pytest.fixture
def make_client():
    """Build a TestClient (lifespan run) for given settings; closed at teardown."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    clients = []

    def build(**settings) -> TestClient:
        client = TestClient(create_app(Settings(**settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, tiny_weights):
    return make_client(weights_dir=tiny_weights, device="cpu")
