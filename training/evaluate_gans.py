"""Evaluators of the GANs, plugged into ``python -m training evaluate`` (:mod:`.evaluate`).

- **dcgan**: the FID of samples against the split's real faces.

The feature-disentangling two are judged by the project's attribute classifier (family ``classifier``;
``--classifier PATH``, by default ``classifier.safetensors`` beside the evaluated checkpoint):

- **acgan**: the classifier's agreement with the requested attributes on generated samples (overall and per
  attribute; the requests are the evaluated split's real label vectors, so the combinations are plausible), the
  same agreement on the split's real images as a ceiling, and the toggle success rate: for pairs drawn as the
  service draws them (same noise and other attributes), the classifier sees the attribute off in the "off" image
  and on in the "on" image, at the service's default toggle strength and, for comparison, at each of
  ``TOGGLE_STRENGTHS`` (1 is the condition as trained). The toggled attribute is Smiling when trained, else the first.
  With ``--fid``, also the FID of samples and of toggle pairs (as trained and as served) against the split's faces.
  What users send is measured too (:mod:`.attribute_requests`): requests that fix a single attribute, every one on and
  off (``--single-attribute-samples`` each), beside the same model given real faces' whole label vectors with that
  value and the classifier's balanced accuracy; and how often a ``Male: true`` request's open attributes turn on
  lipstick and heavy make-up, beside the rate among the split's men.
- **infogan**: Q's accuracy at recovering the codes of fresh samples (Q is saved in the checkpoint's extras), and,
  per code, how much each classifier attribute's mean probability moves as the code walks through its categories
  (max minus min over categories of the probability averaged over noise vectors); the top attributes per code are
  reported and a heat map of every code x attribute is drawn. Without a classifier only Q's accuracy is measured.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.models.acgan import DEFAULT_TOGGLE_STRENGTH, ACGANGenerator, emphasis
from app.models.attributes import AttributeSource, attribute_source
from app.models.checkpoint import Checkpoint
from app.models.infogan import InfoGANDiscriminator, InfoGANGenerator, draw_codes, recognizer_from_extras, sweep_inputs
from app.models.pipelines import build_pipeline
from app.models.pipelines.acgan import draw_inputs
from app.models.sampling import draw_noise, seeded_generator

from .attribute_judge import BATCH_SIZE, AttributeJudge, batched, classifier_path, load_judge
from .attribute_requests import attribute_request_metrics
from .data import load_labels
from .evaluation import EvaluationError, load_eval_split, register_evaluator
from .fid import FrechetInception, real_statistics
from .plots import saved_figure
from .runtime import save_grid

ACGAN_SAMPLES = 1000  # conditioned samples scored for agreement
TOGGLE_PAIRS = 500  # off/on pairs scored for the toggle success rate
TOGGLE_STRENGTHS = (1.0, 1.25, 1.5, 1.75, 2.0)  # strengths of the toggled attribute also scored (same pairs)
FID_TOGGLE_STRENGTHS = (1.0, DEFAULT_TOGGLE_STRENGTH)  # as trained, and as served
Q_SAMPLES = 1000  # fresh samples whose codes Q must recover
SWEEP_ROWS = 50  # noise vectors per code sweep when measuring attribute changes
TOP_ATTRIBUTES = 3  # attributes reported per code
# A code "means something" when sweeping it moves some attribute's probability by this standard deviation over its
# categories, for a typical noise row (the mean over rows of the per-row deviation).
MEANINGFUL_CODE_STD = 0.15


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# --- DCGAN --------------------------------------------------------------------------------------------------------


@register_evaluator("dcgan", metrics=("fid_samples",), fid="pipeline", always_fid=True)
@torch.inference_mode()
def evaluate_dcgan(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """A grid of 32 samples; the FID of ``--fid-samples`` samples (a noise-only GAN has no other score) is added by
    ``evaluate`` (:func:`training.fid.pipeline_fid`)."""
    save_grid(build_pipeline(checkpoint).sample(32, args.seed), out_dir / "samples.png", nrow=8)
    return {"evaluated_split": args.split}


# --- ACGAN ----------------------------------------------------------------------------------------------------------


def draw_toggle_pairs(
    generator: ACGANGenerator, source: AttributeSource, pairs: int, index: int, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pairs`` off/on pairs of attribute ``index``, drawn by the service's own ACGAN draw
    (:func:`app.models.pipelines.acgan.draw_inputs`). Returns the other attributes (pairs, A), then the
    (2 * pairs) noise and attribute inputs."""
    names = list(generator.attribute_names)
    noise, vectors, drawn = draw_inputs(generator.latent_shape, names, source, pairs, rng, toggle=names[index])
    return drawn.vectors, noise, vectors


@torch.inference_mode()
def acgan_scores(
    generator: ACGANGenerator,
    judge: AttributeJudge,
    conditions: torch.Tensor,
    source: AttributeSource,
    *,
    toggle: str,
    pairs: int = TOGGLE_PAIRS,
    seed: int = 0,
    strength: float = DEFAULT_TOGGLE_STRENGTH,
    batch_size: int = BATCH_SIZE,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Agreement on samples conditioned on ``conditions`` (N, A) and the ``toggle`` success rate over ``pairs`` pairs
    at the toggled attribute's ``strength`` (and at each of ``TOGGLE_STRENGTHS``).

    Returns the metrics and the tensors behind them (``samples``, ``pair_images``: off images then on images).
    """
    names, device = generator.attribute_names, device_of(generator)
    columns = judge.columns(names)
    rng = seeded_generator(seed)

    def judged(noise: torch.Tensor, attributes: torch.Tensor, multipliers: torch.Tensor | None = None) -> torch.Tensor:
        images = generator.generate(
            noise.to(device), attributes.to(device), None if multipliers is None else multipliers.to(device)
        )
        return judge.probabilities(images)[:, columns]

    noise = draw_noise(generator.latent_shape, len(conditions), rng)
    probabilities = batched(judged, noise, conditions, batch_size=batch_size)
    agree = ((probabilities > 0.5).float() == conditions.cpu()).float()

    index = names.index(toggle)
    others, pair_noise, pair_attributes = draw_toggle_pairs(generator, source, pairs, index, rng)

    def pair_success(level: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair: success, P(attribute) of the off image, of the on image."""
        multipliers = emphasis(len(names), index, level)
        toggled = batched(lambda z, a: judged(z, a, multipliers), pair_noise, pair_attributes, batch_size=batch_size)[
            :, index
        ]
        off, on = toggled[:pairs], toggled[pairs:]
        return (off < 0.5) & (on > 0.5), off, on

    scored = {level: pair_success(level) for level in dict.fromkeys((strength, *TOGGLE_STRENGTHS))}  # each once
    success, off, on = scored[strength]
    by_strength = {f"{level:g}": round(scored[level][0].float().mean().item(), 4) for level in TOGGLE_STRENGTHS}
    metrics = {
        "classifier_agreement": round(agree.mean().item(), 4),
        "classifier_agreement_per_attribute": {name: round(v, 4) for name, v in zip(names, agree.mean(0).tolist())},
        "evaluated_samples": len(conditions),
        "toggle_attribute": toggle,
        "toggle_pairs": pairs,
        "toggle_strength": strength,
        "toggle_success": round(success.float().mean().item(), 4),
        "toggle_success_by_strength": by_strength,
        # Per other attribute, the success rate over the pairs where it was off and where it was on: attributes
        # that co-occur with the toggled one in the data (High_Cheekbones with Smiling) show where pairs fail.
        "toggle_success_by_other_attribute": {
            name: [
                round(success[others[:, k] == value].float().mean().item(), 4)
                if (others[:, k] == value).any()
                else None
                for value in (0, 1)
            ]
            for k, name in enumerate(names)
            if k != index
        },
        "toggle_probability_off": round(off.mean().item(), 4),
        "toggle_probability_on": round(on.mean().item(), 4),
    }
    shown = torch.arange(min(10, pairs))
    shown = torch.cat([shown, shown + pairs])  # the first pairs: off row, then on row
    pair_images = generator.generate(
        pair_noise[shown].to(device),
        pair_attributes[shown].to(device),
        emphasis(len(names), index, strength).to(device),
    )
    samples = generator.generate(noise[:32].to(device), conditions[:32].to(device))
    return metrics, {"samples": samples.cpu(), "pair_images": pair_images.cpu()}


@torch.inference_mode()
def real_agreement(
    judge: AttributeJudge, images: torch.Tensor, labels: torch.Tensor, names: list[str], batch_size: int = BATCH_SIZE
) -> torch.Tensor:
    """Per attribute, the classifier's agreement with the true labels of real images: the ceiling for generated ones."""
    device, columns = device_of(judge.model), judge.columns(names)
    probabilities = batched(lambda x: judge.probabilities(x.to(device))[:, columns], images, batch_size=batch_size)
    return ((probabilities > 0.5).float() == labels).float().mean(0)


def real_face_toggle_success(
    judged_on: torch.Tensor, toggle: torch.Tensor, others: torch.Tensor
) -> tuple[float, list[dict[str, Any]]]:
    """The toggle success a generator would reach if it drew *real* faces for each requested attribute vector.

    ``judged_on`` (N,) bool: the judge's call on the toggled attribute of N real faces; ``toggle`` (N,) and
    ``others`` (N, K) their 0/1 labels. Pairs hold the K other attributes at values drawn independently from their
    frequencies in these labels (as the service draws them); for each such combination, the judge's accuracy on the
    real faces with the toggle off times its accuracy on those with it on is that combination's pair success
    (the two images judged independently). Returns the frequency-weighted success and one row per combination.
    A judge that learnt the data's correlations misjudges real faces whose combination is rare, so this is the bar
    a generator as realistic as the data would meet.
    """
    frequencies = others.float().mean(0)
    total, rows = 0.0, []
    for combination in range(2 ** others.shape[1]):
        values = torch.tensor([(combination >> k) & 1 for k in range(others.shape[1])])
        matching = (others == values).all(1)
        faces = [matching & (toggle == state) for state in (0, 1)]
        # NaN where a combination has no real face of one state: the bar cannot be estimated from these labels
        accuracy = [
            (judged_on[chosen] == bool(state)).float().mean().item() if chosen.any() else float("nan")
            for state, chosen in enumerate(faces)
        ]
        share = torch.where(values.bool(), frequencies, 1 - frequencies).prod().item()
        total += share * accuracy[0] * accuracy[1]
        rows.append(
            {
                "others": values.tolist(),
                "faces": [int(chosen.sum()) for chosen in faces],
                "accuracy": accuracy,
                "share": share,
            }
        )
    return total, rows


def bar_chart(generated: dict[str, float], real: dict[str, float], path: Path, title: str) -> None:
    """Agreement per attribute on generated samples beside the same on real images."""
    positions = torch.arange(len(generated)).float()
    with saved_figure(path, size=(max(5.0, 0.5 * len(generated) + 1.5), 3.8), dpi=100) as (_, (axis,)):
        axis.bar((positions - 0.2).tolist(), list(generated.values()), width=0.4, color="tab:blue", label="generated")
        axis.bar(
            (positions + 0.2).tolist(),
            [real[name] for name in generated],
            width=0.4,
            color="tab:orange",
            label="real images",
        )
        axis.legend(loc="lower right", fontsize=8)
        axis.set_xticks(positions.tolist(), list(generated), rotation=60, ha="right", fontsize=8)
        axis.set_ylim(0, 1)
        axis.set_title(title)


@torch.inference_mode()
def acgan_fid(
    generator: ACGANGenerator,
    fid: FrechetInception,
    real: torch.Tensor,
    conditions: torch.Tensor,
    source: AttributeSource,
    *,
    toggle: str,
    count: int,
    seed: int = 0,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FID against ``real`` faces (or their cached ``reference`` statistics) of ``count`` samples conditioned on
    (the first) ``conditions``, and of ``count`` toggle-pair images (off and on halves) at each of
    ``FID_TOGGLE_STRENGTHS``: what pushing the toggled attribute costs in realism."""
    names, device = generator.attribute_names, device_of(generator)
    index, pairs = names.index(toggle), count // 2
    rng = seeded_generator(seed + 1)  # other draws than the agreement's and toggle's
    chosen = conditions[torch.arange(count) % len(conditions)]
    reference = fid.statistics(real) if reference is None else reference

    def generated(noise: torch.Tensor, attributes: torch.Tensor, level: float = 1.0) -> torch.Tensor:
        multipliers = emphasis(len(names), index, level).to(device)
        return batched(lambda z, a: generator.generate(z.to(device), a.to(device), multipliers), noise, attributes)

    samples = generated(draw_noise(generator.latent_shape, count, rng), chosen)
    _, pair_noise, pair_attributes = draw_toggle_pairs(generator, source, pairs, index, rng)
    return {
        "fid_samples": round(fid.distance(reference, samples), 2),
        "fid_toggle_pairs_by_strength": {
            f"{level:g}": round(fid.distance(reference, generated(pair_noise, pair_attributes, level)), 2)
            for level in FID_TOGGLE_STRENGTHS
        },
        "fid_generated_images": count,
        "fid_real_images": len(real),
    }


@register_evaluator(
    "acgan", metrics=("classifier_agreement", "toggle_success", "fid_samples"), fid="own", single_attribute=True
)
def evaluate_acgan(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    generator = checkpoint.model_as(ACGANGenerator)
    names = generator.attribute_names
    path = classifier_path(args)
    if path is None:
        raise EvaluationError(
            "acgan evaluation needs the attribute classifier: pass --classifier PATH "
            f"(no classifier.safetensors beside {args.checkpoint})"
        )
    judge = load_judge(path, device_of(generator))
    judge.columns(names)  # fail before generating anything
    fid = FrechetInception(device_of(generator)) if args.fid else None

    try:
        data_names, data_labels = load_labels(args.data, args.split, args.limit)  # nothing decoded
    except (ValueError, FileNotFoundError) as error:
        raise EvaluationError(str(error)) from None
    try:
        label_columns = [data_names.index(name) for name in names]
    except ValueError:
        raise EvaluationError(f"{args.data} lacks some of the trained attributes {names}") from None
    labels = data_labels[:, label_columns]
    picks = torch.randint(len(labels), (ACGAN_SAMPLES,), generator=seeded_generator(args.seed))
    toggle = "Smiling" if "Smiling" in names else names[0]
    source = attribute_source(names, checkpoint.extras)
    metrics, images = acgan_scores(generator, judge, labels[picks], source, toggle=toggle, seed=args.seed)

    real = load_eval_split(checkpoint, args)
    real_images = real.batch(torch.arange(len(real)))[0]
    per_attribute = real_agreement(judge, real_images, real.attributes[:, label_columns], names)
    metrics["classifier_agreement_real"] = round(per_attribute.mean().item(), 4)
    metrics["classifier_agreement_real_per_attribute"] = {
        name: round(v, 4) for name, v in zip(names, per_attribute.tolist())
    }
    metrics["classifier"] = judge.source
    metrics["evaluated_split"] = args.split
    columns = judge.columns(names)
    metrics.update(
        attribute_request_metrics(
            build_pipeline(checkpoint),
            lambda x: judge.probabilities(x.to(device_of(generator)))[:, columns],
            labels,
            real_images,
            real.attributes[:, label_columns],
            samples=getattr(args, "single_attribute_samples", 0),
            seed=args.seed,
        )
    )
    if fid is not None:
        metrics.update(
            acgan_fid(
                generator,
                fid,
                real_images,
                labels[picks],
                source,
                toggle=toggle,
                count=args.fid_samples,
                seed=args.seed,
                reference=real_statistics(
                    fid,
                    real,
                    data=args.data,
                    split_name=args.split,
                    preprocess=checkpoint.preprocess.to_json(),
                    cache_dir=args.fid_cache,
                ),
            )
        )

    shown = len(images["pair_images"]) // 2
    save_grid(images["pair_images"], out_dir / f"toggle_{toggle}.png", nrow=shown)
    save_grid(images["samples"], out_dir / "samples.png", nrow=8)
    bar_chart(
        metrics["classifier_agreement_per_attribute"],
        metrics["classifier_agreement_real_per_attribute"],
        out_dir / "agreement.png",
        f"classifier agreement with the attributes: generated "
        f"{metrics['classifier_agreement']:.3f}, real {metrics['classifier_agreement_real']:.3f}",
    )
    return metrics


# --- InfoGAN --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def q_accuracy(
    generator: InfoGANGenerator,
    recognizer: InfoGANDiscriminator,
    samples: int = Q_SAMPLES,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> tuple[float, list[float]]:
    """Share of codes Q recovers from fresh samples (overall and per code).

    Q runs with batch statistics in its BatchNorm layers, as it did in training (always on whole batches of fakes);
    the batches are large, so the result does not depend on how they are cut.
    """
    device = device_of(generator)
    rng = seeded_generator(seed)
    noise = draw_noise(generator.noise_shape, samples, rng)
    codes = draw_codes(samples, generator.n_codes, generator.n_categories, rng)
    recognizer = recognizer.to(device).train()
    predicted = batched(
        lambda z, c: recognizer(generator.generate(z.to(device), c.to(device)))[1].argmax(-1),
        noise,
        codes,
        batch_size=batch_size,
    )
    recognizer.eval()
    hits = (predicted == codes).float()
    return hits.mean().item(), hits.mean(0).tolist()


@dataclass(frozen=True)
class CodeEffects:
    """What sweeping each code does to the classifier's attributes."""

    means: torch.Tensor  # (codes, categories, attributes): mean probability per category over the noise rows
    spread: torch.Tensor  # (codes, attributes): max - min of ``means`` over the categories
    row_std: torch.Tensor  # (codes, attributes): per noise row, the deviation over the categories; mean over rows
    sweeps: list[torch.Tensor]  # per code, the first 4 rows of its sweep's images

    def meaningful_codes(self, threshold: float = MEANINGFUL_CODE_STD) -> list[int]:
        return [code for code in range(self.row_std.shape[0]) if self.row_std[code].max().item() >= threshold]


@torch.inference_mode()
def code_effects(
    generator: InfoGANGenerator,
    judge: AttributeJudge,
    rows: int = SWEEP_ROWS,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> CodeEffects:
    """Sweep each code over its categories for ``rows`` noise vectors (the other codes fixed) and judge the images."""
    device = device_of(generator)
    rng = seeded_generator(seed)
    noise = draw_noise(generator.noise_shape, rows, rng)
    codes = draw_codes(rows, generator.n_codes, generator.n_categories, rng)
    means, row_std, sweeps = [], [], []
    for code in range(generator.n_codes):
        swept_noise, swept_codes = sweep_inputs(noise, codes, code, generator.n_categories)
        images = batched(
            lambda z, c: generator.generate(z.to(device), c.to(device)), swept_noise, swept_codes, batch_size=batch_size
        )
        probabilities = batched(lambda x: judge.probabilities(x.to(device)), images, batch_size=batch_size)
        per_row = probabilities.view(rows, generator.n_categories, -1).float().cpu()
        means.append(per_row.mean(0))
        row_std.append(per_row.std(1, unbiased=False).mean(0))
        sweeps.append(images[: min(rows, 4) * generator.n_categories])
    table = torch.stack(means)
    return CodeEffects(table, table.amax(1) - table.amin(1), torch.stack(row_std), sweeps)


def top_effects(
    effects: CodeEffects, attributes: list[str], top: int = TOP_ATTRIBUTES
) -> dict[str, list[dict[str, Any]]]:
    """Per code, the ``top`` attributes its sweep moves most (by the per-row deviation), with the categories where
    they are lowest and highest on average."""
    report = {}
    for code in range(effects.row_std.shape[0]):
        order = effects.row_std[code].argsort(descending=True)[:top].tolist()
        report[str(code)] = [
            {
                "attribute": attributes[a],
                "std": round(effects.row_std[code, a].item(), 4),
                "spread": round(effects.spread[code, a].item(), 4),
                "low_category": int(effects.means[code, :, a].argmin()),
                "high_category": int(effects.means[code, :, a].argmax()),
            }
            for a in order
        ]
    return report


def heat_map(row_std: torch.Tensor, attributes: list[str], path: Path) -> None:
    size = (max(6.0, 0.28 * len(attributes) + 2), 0.4 * row_std.shape[0] + 2.2)
    with saved_figure(path, size=size, dpi=100) as (figure, (axis,)):
        image = axis.imshow(row_std.numpy(), aspect="auto", cmap="viridis", vmin=0)
        axis.set_xticks(range(len(attributes)), attributes, rotation=75, ha="right", fontsize=7)
        axis.set_yticks(range(row_std.shape[0]), [f"code {k}" for k in range(row_std.shape[0])], fontsize=8)
        axis.set_title("per-row deviation of the classifier's attribute probability over each code's categories")
        figure.colorbar(image, ax=axis, fraction=0.03)


@register_evaluator("infogan", metrics=("q_accuracy", "meaningful_codes", "fid_samples"), fid="pipeline")
def evaluate_infogan(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    generator = checkpoint.model_as(InfoGANGenerator)
    metrics: dict[str, Any] = {}
    recognizer = recognizer_from_extras(generator.config, checkpoint.extras)
    if recognizer is None:
        print("no recognizer (D/Q) weights in this checkpoint: Q's accuracy is not measured")
    else:
        overall, per_code = q_accuracy(generator, recognizer, seed=args.seed)
        metrics["q_accuracy"] = round(overall, 4)
        metrics["q_accuracy_per_code"] = [round(v, 4) for v in per_code]
        metrics["q_samples"] = Q_SAMPLES

    path = classifier_path(args)
    if path is None:
        print("no classifier (--classifier PATH): attribute changes per code are not measured")
    else:
        judge = load_judge(path, device_of(generator))
        effects = code_effects(generator, judge, seed=args.seed)
        metrics["code_effects"] = top_effects(effects, judge.attributes)
        strongest = int(effects.row_std.argmax())
        code, attribute = divmod(strongest, effects.row_std.shape[1])
        metrics["strongest_code_effect"] = {
            "code": code,
            "attribute": judge.attributes[attribute],
            "std": round(effects.row_std[code, attribute].item(), 4),
            "spread": round(effects.spread[code, attribute].item(), 4),
        }
        metrics["meaningful_codes"] = effects.meaningful_codes()
        metrics["meaningful_code_std"] = MEANINGFUL_CODE_STD
        metrics["classifier"] = judge.source
        metrics["sweep_rows"] = SWEEP_ROWS
        heat_map(effects.row_std, judge.attributes, out_dir / "code_effects.png")
        for code, images in enumerate(effects.sweeps):
            save_grid(images, out_dir / f"sweep_code{code}.png", nrow=generator.n_categories)
    if not metrics and not args.fid:
        raise EvaluationError(
            "nothing to measure: the checkpoint has no recognizer weights, no classifier "
            "was given (--classifier PATH) and no --fid"
        )
    return metrics
