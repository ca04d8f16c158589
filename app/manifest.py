"""The weights manifest: ``SHA256SUMS`` beside the checkpoints, in ``sha256sum``'s format (``<hex>  <file name>``,
so ``cd weights && sha256sum -c SHA256SUMS`` checks it too).

It lists the top-level ``*.safetensors`` files of the folder, the checkpoints the service loads; files in
sub-folders (e.g. a face detector's weights) belong to the code that loads them and are not listed. At start-up
the service refuses a checkpoint whose digest differs from the manifest's or that the manifest does not list
(``FACEGEN_VERIFY_WEIGHTS=false`` loads them anyway). It catches a wrong, corrupted or tampered file, not an attacker
who can also rewrite the manifest: that needs a signature, which nothing here makes.

After training new checkpoints::

    python -m app.manifest write weights     # rewrite weights/SHA256SUMS from the files
    python -m app.manifest check weights     # exit 1 naming each file that does not match
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from app.models.checkpoint import file_sha256

MANIFEST = "SHA256SUMS"
WRITE_COMMAND = "python -m app.manifest write"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S.*)$")


class ManifestError(ValueError):
    """A manifest that cannot be read."""


def checkpoint_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def read_manifest(directory: Path) -> dict[str, str] | None:
    """File name -> sha256 from ``directory/SHA256SUMS``; None when there is no manifest."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or "/" in match.group(2):
            raise ManifestError(f"{MANIFEST} line {number} is not '<sha256>  <file name>': {line!r}")
        entries[match.group(2)] = match.group(1)
    return entries


def write_manifest(directory: Path) -> Path:
    """(Re)write ``directory/SHA256SUMS`` from the checkpoints there."""
    lines = [f"{file_sha256(path)}  {path.name}\n" for path in checkpoint_files(directory)]
    target = directory / MANIFEST
    target.write_text("".join(lines))
    return target


def mismatches(directory: Path) -> list[str]:
    """Every way the folder and its manifest disagree, one sentence each (empty: they agree)."""
    entries = read_manifest(directory)
    if entries is None:
        return [f"{directory / MANIFEST} does not exist"]
    problems = []
    files = {path.name: path for path in checkpoint_files(directory)}
    for name, path in files.items():
        if name not in entries:
            problems.append(f"{name} is not listed in {MANIFEST}")
        elif file_sha256(path) != entries[name]:
            problems.append(f"{name}: sha256 differs from {MANIFEST}'s")
    problems += [f"{name} is listed in {MANIFEST} but missing" for name in sorted(set(entries) - set(files))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.manifest", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("weights"))
    args = parser.parse_args(argv)
    if args.action == "write":
        print(f"wrote {write_manifest(args.directory)}")
        return 0
    problems = mismatches(args.directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"regenerate it with: {WRITE_COMMAND} {args.directory}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
