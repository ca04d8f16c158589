"""Render deploy/nginx/facegen.conf for other addresses, changing nothing else in it.

    python deploy/nginx/render.py --server 127.0.0.1:8000 --server 127.0.0.1:8001 --listen 8080 > facegen.conf

replaces the addresses of the upstream's ``server`` lines (one --server per line, in order; their parameters stay)
and the ``listen`` port. tests/deploy/test_reverse_proxy.py runs nginx on the result, wrapped by
:func:`write_standalone` in a minimal nginx.conf that keeps every file nginx writes under a prefix folder, so it
runs without root.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "facegen.conf"

_UPSTREAM = re.compile(r"^upstream\s+facegen\s*\{\n(.*?)^\}", re.MULTILINE | re.DOTALL)
_SERVER = re.compile(r"^(\s*server\s+)(\S+)(\s[^;\n]*)?;", re.MULTILINE)
_LISTEN = re.compile(r"^(\s*listen\s+)(\S+?)(\s[^;\n]*)?;", re.MULTILINE)


def render(servers: list[str], listen: str, text: str | None = None) -> str:
    """``text`` (default: facegen.conf) with the upstream's server addresses and the listen address replaced."""
    text = CONFIG.read_text() if text is None else text
    upstream = _UPSTREAM.search(text)
    if upstream is None:
        raise ValueError("no `upstream facegen { ... }` block at the start of a line")
    found = _SERVER.findall(upstream.group(1))
    if len(found) != len(servers):
        raise ValueError(f"the upstream has {len(found)} server lines, got {len(servers)} addresses")
    addresses = iter(servers)
    block = _SERVER.sub(lambda m: f"{m.group(1)}{next(addresses)}{m.group(3) or ''};", upstream.group(1))
    text = text[: upstream.start(1)] + block + text[upstream.end(1) :]
    text, listens = _LISTEN.subn(lambda m: f"{m.group(1)}{listen}{m.group(3) or ''};", text)
    if listens != 1:
        raise ValueError(f"expected one listen line, found {listens}")
    return text


def write_standalone(prefix: Path, servers: list[str], listen: str) -> Path:
    """Write ``prefix``/facegen.conf (rendered) and a minimal ``prefix``/nginx.conf that includes it at the http
    level and keeps everything nginx writes (pid, logs, temp files) under ``prefix``; returns the nginx.conf, for
    ``nginx -p PREFIX -c PREFIX/nginx.conf -e PREFIX/error.log -g 'daemon off;'``."""
    prefix = prefix.resolve()
    site = prefix / "facegen.conf"
    site.write_text(render(servers, listen))
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main_conf = prefix / "nginx.conf"
    main_conf.write_text(f"""worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix / "access.log"};
{temp}
    include {site};
}}
""")
    return main_conf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True, help="host:port of a replica (once per line)")
    parser.add_argument("--listen", default="8080", help="nginx's listen address (port, or host:port)")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render(args.server, args.listen))
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
