"""The README stays short, and every relative link in the README and docs/*.md points to a file that exists.

(`make test` also builds the documentation site with `mkdocs build --strict`, which checks the links between
the pages of docs/ and their anchors, and every API reference.)
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 15_000  # bytes, as `wc -c README.md` counts them

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """Targets of inline Markdown links and images outside code, without URLs, mail links and bare anchors."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # fenced code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


def test_link_parser_finds_links_and_skips_code():
    text = ("See [a](docs/a.md#x), ![pic](b.png) and [web](https://example.org), [anchor](#here).\n"
            "`[not](c.md)`\n```\n[not](d.md)\n```\n[e [nested]](e.md)")
    assert relative_links(text) == ["docs/a.md", "b.png", "e.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    missing = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"
