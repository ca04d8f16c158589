"""The documentation: a short README that links to every page, and the MkDocs site built strictly (``make docs``),
so a broken link, a broken anchor or a page missing from the nav fails ``make test``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200
# Markdown links and images: [text](target) and ![alt](target)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def mkdocs_build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a build problem
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def config() -> dict:
    # mkdocs.yml holds no Python tags (Material's !!python/name: emoji options are not used), so safe_load reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for the tests that read it, as ``make docs`` builds it."""
    site = tmp_path_factory.mktemp("docs") / "site"
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return site


def test_the_site_builds_strictly_with_every_page_in_the_nav(site):
    pages = nav_pages(config()["nav"])
    on_disk = sorted(str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk
    for page in pages:
        built = site / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert built.is_file(), page
    # the changelog page is the repository's CHANGELOG.md, included at build time
    first_entry = next(line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("- "))
    words = re.sub(r"[*`]", "", first_entry[2:]).split(":")[0]
    assert words in re.sub(r"<[^>]+>", "", (site / "changelog" / "index.html").read_text())


def test_the_site_needs_nothing_from_outside(site):
    """No web fonts, analytics or CDN: the built pages load nothing from another origin."""
    settings = config()
    assert settings["theme"]["font"] is False and "analytics" not in settings.get("extra", {})
    outside = re.compile(r"""<(?:script|link|img)\b[^>]*(?:src|href)=["'](?:https?:)?//""")
    for page in site.rglob("*.html"):
        assert not outside.search(page.read_text()), page


def test_the_project_settings_fail_a_broken_site(tmp_path):
    """The same validation settings (mkdocs.yml, inherited) over a small site with a broken link, a broken anchor and
    a page left out of the nav: the strict build fails and names each. This is what keeps a moved section from
    leaving dead links behind."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the other page](other.md#a-heading) and [gone](missing.md).\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n\nBack [home](index.md#no-such-heading).\n")
    (docs / "orphan.md").write_text("# Orphan\n")
    child = tmp_path / "mkdocs.yml"
    child.write_text(
        yaml.safe_dump(
            {
                "INHERIT": str(ROOT / "mkdocs.yml"),
                "docs_dir": str(docs),
                "nav": [{"Home": "index.md"}, {"Other": "other.md"}],
                "markdown_extensions": ["toc"],  # no snippets: nothing to include here
            }
        )
    )
    result = mkdocs_build(child, tmp_path / "site")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for fault in ("missing.md", "no-such-heading", "orphan.md"):
        assert fault in output, (fault, output[-3000:])
    # each is a warning (an anchor is only logged as info unless mkdocs.yml says otherwise), and the good link is not
    assert "Aborted with 3 warnings in strict mode" in output, output[-3000:]


def test_the_readme_is_short_links_every_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    targets = [target for target in LINK.findall(readme) if not re.match(r"[a-z]+://", target)]
    for target in targets:
        assert (ROOT / target.split("#")[0]).exists(), f"README links to {target}, which does not exist"
    linked = {target.split("#")[0] for target in targets}
    for page in nav_pages(config()["nav"]):
        if page != "index.md":  # the site's home: the README is its counterpart
            assert f"docs/{page}" in linked or (page == "changelog.md" and "CHANGELOG.md" in linked), page
