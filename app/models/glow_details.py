"""Glow's summary, tiny test config and bench request. They belong in ``glow.py``'s ``@register_family`` and
``pipelines/glow.py``'s ``@register_pipeline`` keywords, as every other family has them; they wait here only while
the Glow is being replaced, and move there with the new one (then this module goes)."""

from . import glow  # noqa: F401  (registers the family before it is described)
from .pipelines import BenchRequest, add_bench_request
from .registry import describe_family

describe_family(
    "glow",
    summary="conditional Glow (prior conditioned on the 40 attributes): samples, interpolation, manipulation, bits/dim",
    tiny={"image_size": 16, "levels": 2, "steps": 2, "hidden": 8},
)
# The route's defaults for the rest of the body: attributes drawn, the served temperature, PNG.
add_bench_request("glow", BenchRequest("/generate/glow"))
