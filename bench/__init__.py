"""Benchmark of the facegen service: ``python -m bench --startup`` (see :mod:`bench.cli` and docs/benchmarks.md).

It measures, side by side in one run: closed-loop HTTP load per scenario (:mod:`bench.scenarios`) and concurrency
with dynamic batching on and off, the end-to-end cost of a request of 64 against the raw in-process forward
(:mod:`bench.raw_forward`), a LitServe peer serving the same DCGAN checkpoint (:mod:`bench.peer_litserve`), the
behaviour under overload (:mod:`bench.overload`), the server's memory and start-up time, and checks them against
the targets in :mod:`bench.report`.
"""
