"""One pipeline per family (see :mod:`.base`); importing this package registers them all."""

import importlib
import pkgutil

from .base import (
    CAPABILITIES,
    ENCODE,
    SAMPLE,
    SCORE,
    BenchRequest,
    Pipeline,
    Prepared,
    add_bench_request,
    bench_requests,
    build_pipeline,
    families_with,
    finite_images,
    pipeline_class,
    register_pipeline,
    unregister_pipeline,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CAPABILITIES",
    "ENCODE",
    "SAMPLE",
    "SCORE",
    "BenchRequest",
    "Pipeline",
    "Prepared",
    "add_bench_request",
    "bench_requests",
    "build_pipeline",
    "families_with",
    "finite_images",
    "pipeline_class",
    "register_pipeline",
    "unregister_pipeline",
]
