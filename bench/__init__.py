"""Benchmark of a running facegen service: ``python -m bench --url http://127.0.0.1:8000``.

It measures, per sampling family, the raw in-process forward throughput, the end-to-end HTTP throughput and
latency, the server's resident memory and (with ``--startup``) the time from process start to ``GET /ready`` = 200,
and checks them against the targets in :mod:`bench.report`.
"""
