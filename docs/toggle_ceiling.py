"""How the evaluator judges Smiling on *real* faces, split by High_Cheekbones and Mouth_Slightly_Open.

The ACGAN toggle success rate asks the classifier to see Smiling off in one image and on in the other while the
other attributes stay as drawn (independently, from their training-set frequencies). In CelebA, High_Cheekbones and
Mouth_Slightly_Open go with smiles, so one image of many pairs asks for a combination real faces rarely have. This
script measures how the same classifier judges real faces of each combination, and the toggle success a generator
would reach if it drew real faces for each requested vector (the two images of a pair judged independently):

    python docs/toggle_ceiling.py --data ../shared/data/celeba-mini --classifier weights/classifier.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in a checkout

from training.data import load_split  # noqa: E402
from training.evaluate_gans import load_judge, real_face_toggle_success  # noqa: E402

TOGGLE, OTHERS = "Smiling", ("High_Cheekbones", "Mouth_Slightly_Open")


@torch.inference_mode()
def judged_probabilities(judge, split, batch_size: int = 256) -> torch.Tensor:
    indices = torch.arange(len(split))
    return torch.cat(
        [judge.probabilities(split.batch(indices[i : i + batch_size])[0]) for i in range(0, len(split), batch_size)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--classifier", default="weights/classifier.safetensors")
    parser.add_argument("--split", default="train", choices=["train", "valid", "test"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    judge = load_judge(args.classifier, torch.device("cpu"))
    split = load_split(args.data, args.split)
    names = split.attribute_names
    seen = judged_probabilities(judge, split)[:, names.index(TOGGLE)] > 0.5
    labels = split.attributes
    toggle = labels[:, names.index(TOGGLE)]
    others = torch.stack([labels[:, names.index(name)] for name in OTHERS], 1)
    success, rows = real_face_toggle_success(seen, toggle, others)
    print(
        f"{args.split} split, {len(split)} faces; judged correctly = the classifier's {TOGGLE} call matches the label"
    )
    for row in rows:
        combination = " ".join(f"{name}={value}" for name, value in zip(OTHERS, row["others"]))
        print(
            f"  {combination} (share of pairs {row['share']:.3f}): judged correctly "
            + ", ".join(
                f"{TOGGLE}={state}: {row['accuracy'][state]:.3f} of {row['faces'][state]} faces" for state in (0, 1)
            )
        )
    print(f"toggle success of a generator drawing real faces (pairs drawn as the service draws them): {success:.3f}")


if __name__ == "__main__":
    main()
