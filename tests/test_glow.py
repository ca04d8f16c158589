"""Conditional Glow: every layer and the whole flow invert, log-determinants match brute-force Jacobians, the
objective trains, sampling is seeded; the four endpoints and their validation; a training smoke run that the app
serves."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.flows import ActNorm, ConditionalPrior, Coupling, FlowStep, InvConv1x1, Split, squeeze2d, unsqueeze2d
from app.models.glow import DIRECTIONS_KEY, Glow, GlowConfig, dequantize, interpolate_latents, postprocess
from app.models.preprocess import PreprocessSpec

from .conftest import ATTRIBUTE_NAMES, TINY_CONFIGS, png_of, write_tiny_checkpoint

torch.set_num_threads(1)


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often zero / identity) initialisation, so tests see a generic flow."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_attributes(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand((n, 40), generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def tiny_glow(dtype: torch.dtype = torch.float64, **overrides) -> Glow:
    """The tiny config, actnorm initialised on random images, then perturbed; eval mode."""
    torch.manual_seed(0)
    model = Glow(GlowConfig(**{**TINY_CONFIGS["glow"], **overrides}))
    model.initialize(random_images(8, model.config.image_size), random_attributes(8))
    return perturb(model).to(dtype).eval()


def brute_force_logdet(function, x: torch.Tensor) -> torch.Tensor:
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian)[1]


# ---- layers ----------------------------------------------------------------------------------------------------


def make_layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(1)
    layer = {
        "actnorm": lambda: ActNorm(4),
        "invconv": lambda: InvConv1x1(4),
        "affine": lambda: Coupling(4, 8, True),
        "additive": lambda: Coupling(4, 8, False),
        "step": lambda: FlowStep(4, 8, True),
    }[kind]()
    layer(torch.randn(16, 4, 4, 4) * 3 + 1)  # data-dependent init of any actnorm inside
    return perturb(layer, 0.1).double().eval()


@pytest.mark.parametrize("kind", ["actnorm", "invconv", "affine", "additive", "step"])
def test_each_layer_inverts_and_its_logdet_matches_the_jacobian(kind):
    layer = make_layer(kind)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    assert not torch.allclose(y, x), "the layer should not be the identity here"
    assert torch.allclose(layer.reverse(y), x, atol=1e-10, rtol=0)
    assert logdet.shape == (3,)
    one = x[:1]
    assert torch.allclose(brute_force_logdet(lambda v: layer(v)[0], one), layer(one)[1][0], atol=1e-8)

    layer32 = layer.float()
    y32, _ = layer32(x.float())
    assert (layer32.reverse(y32) - x.float()).abs().max() < 1e-3


def test_actnorm_data_dependent_init_standardises_and_is_saved_as_a_buffer():
    norm = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 4.0, 0.2])[None, :, None, None] + 7
    y, _ = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert bool(norm.state_dict()["initialized"])
    before = norm.bias.detach().clone()
    norm(x * 10)  # already initialised: a second batch changes nothing
    assert torch.equal(norm.bias, before)
    fresh = ActNorm(3)
    fresh.load_state_dict(norm.state_dict())
    fresh.train()(x * 10)  # a loaded (initialised) actnorm never re-initialises, even in training mode
    assert torch.equal(fresh.bias, before)
    assert not bool(ActNorm(3).eval()(x)[0].sub(x).abs().max()), "eval mode never initialises"


def test_invconv_is_lu_parametrised_and_its_logdet_is_cheap():
    conv = make_layer("invconv")
    weight = conv.weight()
    assert torch.allclose(torch.linalg.slogdet(weight)[1], conv.log_s.sum())
    assert {"permutation", "sign_s", "lower", "upper", "log_s"} <= set(conv.state_dict())


def test_coupling_starts_as_identity_with_zero_initialised_last_conv():
    coupling = Coupling(4, 8, affine=False)
    x = torch.randn(2, 4, 3, 3)
    y, logdet = coupling(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_squeeze_and_split_invert():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    squeezed = squeeze2d(x)
    assert squeezed.shape == (2, 12, 4, 4) and torch.equal(unsqueeze2d(squeezed), x)
    assert torch.equal(squeezed[0, :4, 0, 0], torch.stack([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))

    split = perturb(Split(12, 4, 4, num_attributes=40)).double()
    stay, z = split(squeezed)
    assert stay.shape == z.shape == (2, 6, 4, 4) and torch.equal(split.reverse(stay, z), squeezed)
    # The split's prior maps standard noise to z and back.
    y = random_attributes(2).double()
    eps = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    sampled = split.prior.sample(stay, y, eps, temperature=1.0)
    mean, logs = split.prior(stay, y)
    assert torch.allclose((sampled - mean) * torch.exp(-logs), eps, atol=1e-12)


def test_conditional_prior_starts_as_standard_normal_and_depends_on_y():
    prior = ConditionalPrior((2, 3, 3), num_attributes=40)
    mean, logs = prior(None, random_attributes(4))
    assert torch.equal(mean, torch.zeros(4, 2, 3, 3)) and torch.equal(logs, torch.zeros(4, 2, 3, 3))
    perturb(prior)
    mean_a, _ = prior(None, torch.zeros(1, 40))
    mean_b, _ = prior(None, torch.ones(1, 40))
    assert not torch.allclose(mean_a, mean_b)


# ---- the whole flow --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_whole_flow_inverts(coupling):
    model = tiny_glow(coupling=coupling)
    x = dequantize(random_images(3, 16, seed=1).double(), 8, "uniform", torch.Generator().manual_seed(0))
    z_list, logdet = model.encode(x)
    assert [tuple(z.shape[1:]) for z in z_list] == model.latent_shapes == [(6, 8, 8), (24, 4, 4)]
    assert model.latent_dim == 3 * 16 * 16 and torch.isfinite(logdet).all()
    assert (model.decode(z_list) - x).abs().max() < 1e-10

    model32 = model.float()
    z32, _ = model32.encode(x.float())
    assert (model32.decode(z32) - x.float()).abs().max() < 1e-3
    flat = model32.flatten_latents(z32)
    assert all(torch.equal(a, b) for a, b in zip(model32.unflatten_latents(flat), z32))


@pytest.mark.parametrize(
    "config",
    [{"image_size": 4, "levels": 1}, {"image_size": 4, "levels": 2}, {"image_size": 8, "levels": 2, "steps": 1}],
)
def test_flow_logdet_matches_brute_force_jacobian(config):
    model = tiny_glow(**config)
    x = dequantize(
        random_images(1, config["image_size"], seed=2).double(), 8, "uniform", torch.Generator().manual_seed(1)
    )
    expected = brute_force_logdet(lambda v: model.flatten_latents(model.encode(v)[0]), x)
    assert torch.allclose(model.encode(x)[1][0], expected, atol=1e-8), (model.encode(x)[1][0], expected)


def test_dequantize_and_postprocess_round_trip_8_and_5_bits():
    pixels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    images = pixels / 127.5 - 1
    centre = dequantize(images, 8, "center")
    assert centre.min() > -0.5 and centre.max() < 0.5
    assert torch.allclose(postprocess(centre, 8), images, atol=1e-6)
    noisy = dequantize(images, 8, "uniform", torch.Generator().manual_seed(0))
    assert ((noisy - dequantize(images, 8, "center")).abs() <= 0.5 / 256 + 1e-7).all()
    five = postprocess(dequantize(images, 5, "center"), 5)
    assert five.unique().numel() == 32 and (five - images).abs().max() <= 4 / 127.5 + 1e-6


def test_bits_per_dim_is_finite_and_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Glow(GlowConfig(**TINY_CONFIGS["glow"]))
    images = (random_images(8, 16, seed=3) * 0.3).round(decimals=1)  # structured, learnable
    attributes = random_attributes(8, seed=3)
    model.initialize(images, attributes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        loss, bits_per_dim, class_bits = model.loss(images, attributes, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and torch.isfinite(class_bits)
        history.append(bits_per_dim.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < history[0] - 0.1, history
    assert all(b < a + 0.05 for a, b in zip(history, history[1:])), history


def test_marginal_likelihood_with_one_draw_is_the_conditional():
    model = tiny_glow()
    images, y = random_images(2, 16).double(), random_attributes(1).double()
    conditional = model.bits_per_dim(images, y.expand(2, 40))
    assert torch.allclose(model.marginal_bits_per_dim(images, y), conditional, atol=1e-10)
    several = model.marginal_bits_per_dim(images, random_attributes(5).double())
    assert torch.isfinite(several).all()


def test_same_seed_same_samples_and_temperature_zero_is_the_prior_mean():
    model = tiny_glow(torch.float32)
    y = random_attributes(3)
    first = model.sample(y, 0.7, torch.Generator().manual_seed(5))
    assert first.shape == (3, 3, 16, 16) and first.abs().max() <= 1
    assert torch.equal(first, model.sample(y, 0.7, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, model.sample(y, 0.7, torch.Generator().manual_seed(6)))
    cold = [model.sample(y, 0.0, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(cold[0], cold[1]), "at temperature 0 the noise does not matter"


def test_conditioning_changes_samples():
    model = tiny_glow(torch.float32)
    off, on = torch.zeros(1, 40), torch.ones(1, 40)
    assert not torch.allclose(
        model.sample(off, 0.7, torch.Generator().manual_seed(0)),
        model.sample(on, 0.7, torch.Generator().manual_seed(0)),
    )


def test_interpolation_endpoints_are_the_reconstructions():
    model = tiny_glow(torch.float32)
    images = random_images(2, 16, seed=4)
    latents = model.encode_images(images)
    for method in ("linear", "slerp"):
        frames = interpolate_latents(latents[0], latents[1], 6, method)
        assert frames.shape == (6, model.latent_dim)
        assert torch.equal(frames[0], latents[0]) and torch.equal(frames[-1], latents[1])
        decoded = model.decode_images(frames)
        assert torch.equal(decoded[[0, -1]], model.reconstruct(images))
    # An 8-bit reconstruction is the quantised input itself.
    quantised = torch.round((images + 1) * 127.5) / 127.5 - 1
    assert (model.reconstruct(images) - quantised).abs().max() < 1e-3
    middle = interpolate_latents(latents[0], latents[1], 3, "slerp")[1]
    assert torch.isclose(middle.norm(), (latents[0].norm() + latents[1].norm()) / 2, rtol=0.05)


def test_config_is_validated():
    with pytest.raises(ValueError, match="coupling"):
        GlowConfig(coupling="spline")
    with pytest.raises(ValueError, match="does not halve"):
        GlowConfig(image_size=20, levels=3)
    with pytest.raises(ValueError, match="n_bits"):
        GlowConfig(n_bits=9)


def test_loaded_checkpoint_keeps_actnorm_init_and_is_float32(tmp_path):
    model = tiny_glow(torch.float32)
    path = save_checkpoint(tmp_path / "glow.safetensors", model, preprocess=PreprocessSpec(size=16), dtype=None)
    loaded = load_checkpoint(path).model
    images, y = random_images(2, 16), random_attributes(2)
    assert torch.equal(loaded.bits_per_dim(images, y), model.bits_per_dim(images, y))
    loaded.train()
    loaded.initialize(images * 0.1, y)  # initialised already: a no-op
    assert torch.equal(loaded.bits_per_dim(images, y), model.bits_per_dim(images, y))


# ---- the service -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glow_weights(tmp_path_factory):
    """A perturbed tiny Glow (so its outputs are not trivial) with directions and frequencies, stored as float32."""
    directory = tmp_path_factory.mktemp("glow-weights")
    model = tiny_glow(torch.float32)
    generator = torch.Generator().manual_seed(0)
    extras = {
        DIRECTIONS_KEY: torch.randn((40, model.latent_dim), generator=generator) * 0.3,
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    save_checkpoint(
        directory / "glow.safetensors",
        model,
        preprocess=PreprocessSpec(size=16),
        attributes=list(ATTRIBUTE_NAMES),
        extras=extras,
        dtype=None,
    )
    return directory


@pytest.fixture
def glow_client(make_client, glow_weights):
    return make_client(weights_dir=glow_weights, device="cpu")


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def files_ab(face_bytes):
    return {"face_a": ("a.jpg", face_bytes[0], "image/jpeg"), "face_b": ("b.jpg", face_bytes[1], "image/jpeg")}


def test_generate_png_json_seeded_and_attributes_reported(glow_client):
    response = glow_client.post("/generate/glow", json={"n": 10, "seed": 3, "attributes": {"Smiling": True}})
    assert response.status_code == 200 and response.headers["x-seed"] == "3"
    assert png_size(response.content) == (8 * 18 + 2, 2 * 18 + 2)
    header = json.loads(response.headers["x-attributes"])
    smiling = header["names"].index("Smiling")
    assert len(header["rows"]) == 10 and all(row[smiling] == "1" for row in header["rows"])
    again = glow_client.post("/generate/glow", json={"n": 10, "seed": 3, "attributes": {"Smiling": True}})
    assert again.content == response.content

    body = glow_client.post(
        "/generate/glow", json={"n": 3, "seed": 9, "temperature": 1.0, "format": "json", "attributes": {"Male": False}}
    ).json()
    assert body["model"] == "glow" and body["seed"] == 9 and body["temperature"] == 1.0 and len(body["images"]) == 3
    assert len(body["attributes"]) == 3 and all(
        vector["Male"] is False and len(vector) == 40 for vector in body["attributes"]
    )
    cold = glow_client.post(
        "/generate/glow", json={"n": 3, "seed": 9, "temperature": 0, "format": "json", "attributes": {"Male": False}}
    ).json()
    assert cold["images"] != body["images"]


@pytest.mark.parametrize(
    "payload, needle",
    [
        ({"temperature": 1.6}, "less than or equal to 1.5"),
        ({"temperature": -0.1}, "greater than or equal to 0"),
        ({"attributes": {"Smiling": True, "Wings": True}}, "Wings"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"n": 65}, "between 1 and 64"),
        ({"colour": "red"}, "Extra inputs"),
        ({"temperature": "hot"}, "float"),
    ],
)
def test_generate_validation(glow_client, payload, needle):
    response = glow_client.post("/generate/glow", json=payload)
    assert response.status_code == 422 and needle in json.dumps(response.json())
    if "Wings" in payload.get("attributes", {}):
        assert "valid" in json.dumps(response.json()) and "Smiling" in json.dumps(response.json())


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_formats_and_endpoints(glow_client, face_bytes, method):
    strip = glow_client.post("/glow/interpolate", files=files_ab(face_bytes), data={"steps": "5", "method": method})
    assert strip.status_code == 200 and png_size(strip.content) == (5 * 18 + 2, 18 + 2)
    gif = glow_client.post("/glow/interpolate", files=files_ab(face_bytes), data={"format": "gif", "method": method})
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    assert Image.open(io.BytesIO(gif.content)).n_frames >= 2
    body = glow_client.post(
        "/glow/interpolate", files=files_ab(face_bytes), data={"format": "json", "method": method}
    ).json()
    assert body["method"] == method and len(body["frames"]) == 8
    # The end frames are the reconstructions of a and b: the same as strength 0 of a manipulation of each.
    for index, face in ((0, face_bytes[0]), (-1, face_bytes[1])):
        manipulated = glow_client.post(
            "/glow/manipulate",
            files={"face": ("f.jpg", face, "image/jpeg")},
            data={"attribute": "Smiling", "strengths": "0", "format": "json"},
        ).json()
        assert body["frames"][index] == manipulated["images"][0]
        # ...and an 8-bit Glow reconstructs the preprocessed upload exactly.
        assert manipulated["original"] == manipulated["images"][0]


def test_manipulate_strengths_steps_and_formats(glow_client, face_bytes):
    files = {"face": ("f.jpg", face_bytes[2], "image/jpeg")}
    body = glow_client.post(
        "/glow/manipulate",
        files=files,
        data={"attribute": "Smiling", "strengths": "-1, -0.5,0,0.5,1", "format": "json"},
    ).json()
    assert body["attribute"] == "Smiling" and body["strengths"] == [-1, -0.5, 0, 0.5, 1]
    assert len(set(body["images"])) == 5 and body["images"][2] == body["original"]
    stepped = glow_client.post(
        "/glow/manipulate", files=files, data={"attribute": "Smiling", "steps": "3", "max_strength": "2"}
    )
    assert stepped.status_code == 200 and stepped.headers["x-strengths"] == "-2,0,2"
    assert png_size(stepped.content) == (3 * 18 + 2, 18 + 2)
    default = glow_client.post("/glow/manipulate", files=files, data={"attribute": "Male", "format": "gif"})
    assert default.status_code == 200 and default.headers["x-strengths"] == "-1,-0.5,0,0.5,1"


def test_likelihood(glow_client, face_bytes):
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(face_bytes[:3])]
    files.append(("images", ("flat.png", png_of((40, 50)), "image/png")))
    # align=none: the flat image is no face (align=auto would answer 422), and its likelihood is part of the test.
    body = glow_client.post("/glow/likelihood", files=files, data={"align": "none"}).json()
    assert body["model"] == "glow" and [image["filename"] for image in body["images"]] == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "flat.png",
    ]
    assert all(0 < image["bits_per_dim"] < 100 for image in body["images"])
    again = glow_client.post("/glow/likelihood", files=files[:1], data={"align": "none"}).json()
    assert again["images"][0] == body["images"][0], "deterministic, and independent of the batch"


def test_upload_validation_errors(glow_client, face_bytes):
    face = ("f.jpg", face_bytes[0], "image/jpeg")
    text = ("notes.txt", b"this is not an image", "text/plain")
    cases = [
        ("/glow/interpolate", {"face_a": face}, {}, 422, "face_b"),
        ("/glow/interpolate", {"face_a": face, "face_b": text}, {}, 415, "notes.txt"),
        ("/glow/interpolate", files_ab(face_bytes), {"steps": "1"}, 422, "greater than or equal to 2"),
        ("/glow/interpolate", files_ab(face_bytes), {"steps": "33"}, 422, "less than or equal to 32"),
        ("/glow/interpolate", files_ab(face_bytes), {"method": "cubic"}, 422, "slerp"),
        ("/glow/interpolate", files_ab(face_bytes), {"format": "bmp"}, 422, "gif"),
        ("/glow/manipulate", {}, {"attribute": "Smiling"}, 422, "face"),
        ("/glow/manipulate", {"face": face}, {}, 422, "attribute"),
        ("/glow/manipulate", {"face": text}, {"attribute": "Smiling"}, 415, "notes.txt"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Wings"}, 422, "Wings"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1,two"}, 422, "comma-separated"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1,,2"}, 422, "comma-separated"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "nan"}, 422, "between"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "9"}, 422, "between"),
        (
            "/glow/manipulate",
            {"face": face},
            {"attribute": "Smiling", "strengths": ",".join(["0.1"] * 33)},
            422,
            "between 1 and 32",
        ),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1", "steps": "3"}, 422, "not both"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "steps": "40"}, 422, "less than or equal to 32"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "max_strength": "0"}, 422, "greater than 0"),
        ("/glow/likelihood", {}, {}, 422, "images"),
        ("/glow/likelihood", {"images": text}, {}, 415, "notes.txt"),
    ]
    for path, files, data, status, needle in cases:
        response = glow_client.post(path, files=files, data=data)
        assert response.status_code == status and needle in json.dumps(response.json()), (path, data, response.text)
    unknown = glow_client.post("/glow/manipulate", files={"face": face}, data={"attribute": "Wings"}).json()
    assert "valid" in json.dumps(unknown) and "Smiling" in json.dumps(unknown)
    many = [("images", (f"{i}.png", png_of((8, 8)), "image/png")) for i in range(33)]
    assert glow_client.post("/glow/likelihood", files=many).status_code == 422


def test_checkpoint_without_directions_is_503_for_manipulation(make_client, tmp_path, face_bytes):
    write_tiny_checkpoint(tmp_path, "glow")  # no extras: no directions, uniform attribute draws
    client = make_client(weights_dir=tmp_path, device="cpu")
    assert client.post("/generate/glow", json={"n": 2, "seed": 1}).status_code == 200
    response = client.post(
        "/glow/manipulate", files={"face": ("f.jpg", face_bytes[0], "image/jpeg")}, data={"attribute": "Smiling"}
    )
    assert response.status_code == 503 and "attribute directions" in response.json()["detail"]


# ---- training ----------------------------------------------------------------------------------------------------


def test_training_smoke_run_is_served(tiny_celeba, tmp_path, monkeypatch, make_client, face_bytes):
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)  # the pack cache goes under .cache/ of the working directory
    out = tmp_path / "weights" / "glow.safetensors"
    main(
        [
            "glow",
            "--data",
            str(tiny_celeba),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            "--image-size",
            "16",
            "--levels",
            "2",
            "--steps",
            "2",
            "--hidden",
            "8",
            "--coupling",
            "additive",
            "--n-bits",
            "5",
            "--epochs",
            "2",
            "--batch-size",
            "6",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--direction-images",
            "10",
        ]
    )
    run = tmp_path / "run"
    assert (run / "curves.png").exists() and (run / "losses.csv").exists()
    assert {f"samples_epoch002_t{t}.png" for t in ("0.5", "0.7", "1.0")} <= {p.name for p in run.iterdir()}

    checkpoint = load_checkpoint(out)
    assert (
        checkpoint.family == "glow" and checkpoint.config["coupling"] == "additive" and checkpoint.config["n_bits"] == 5
    )
    assert checkpoint.extras[DIRECTIONS_KEY].shape == (40, 768) and checkpoint.extras[DIRECTIONS_KEY].abs().sum() > 0
    assert checkpoint.extras[FREQUENCIES_KEY].shape == (40,)
    assert 0 < checkpoint.metrics["valid_bits_per_dim"] < 20 and checkpoint.metrics["n_bits"] == 5
    assert checkpoint.training["epochs"] == 2
    with safe_open(str(out), framework="pt") as handle:
        assert handle.get_tensor("levels.0.steps.0.invconv.lower").dtype == torch.float32
        assert bool(handle.get_tensor("levels.0.steps.0.actnorm.initialized"))

    client = make_client(weights_dir=out.parent, device="cpu")
    assert client.post("/generate/glow", json={"n": 4, "seed": 0, "attributes": {"Smiling": True}}).status_code == 200
    manipulated = client.post(
        "/glow/manipulate",
        files={"face": ("f.jpg", face_bytes[0], "image/jpeg")},
        data={"attribute": "Smiling", "strengths": "0,1", "format": "json"},
    )
    assert manipulated.status_code == 200 and len(manipulated.json()["images"]) == 2
    assert (
        client.post("/glow/likelihood", files=[("images", ("f.jpg", face_bytes[0], "image/jpeg"))]).status_code == 200
    )
    card = client.get("/models/glow").json()
    assert card["metrics"]["valid_bits_per_dim"] == checkpoint.metrics["valid_bits_per_dim"]


def test_non_finite_loss_stops_with_the_step(tiny_celeba, tmp_path, monkeypatch):
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    original = Glow.loss

    def poisoned(self, images, y, generator=None):
        loss, bits, class_bits = original(self, images, y, generator)
        return loss * float("nan"), bits, class_bits

    monkeypatch.setattr(Glow, "loss", poisoned)
    with pytest.raises(FloatingPointError, match="at step 1 "):
        main(
            [
                "glow",
                "--data",
                str(tiny_celeba),
                "--out",
                str(tmp_path / "g.safetensors"),
                "--run-dir",
                str(tmp_path / "run"),
                "--image-size",
                "16",
                "--levels",
                "2",
                "--steps",
                "1",
                "--hidden",
                "4",
                "--batch-size",
                "4",
                "--threads",
                "1",
            ]
        )
