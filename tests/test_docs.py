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


# --- the public API's docstrings: numpydoc sections, and Examples that run as written -----------------------

def _public_names() -> list[str]:
    import napari_gradcamo  # light: the names are imported only on first use

    return sorted(napari_gradcamo._EXPORTS)


def _public_object(name: str):
    """The object behind ``napari_gradcamo.<name>``, taken from the module that defines it."""
    import importlib

    import napari_gradcamo

    return getattr(importlib.import_module(napari_gradcamo._EXPORTS[name]), name)


@pytest.mark.parametrize("name", _public_names())
def test_public_docstring_has_numpydoc_sections(name):
    import inspect

    obj = _public_object(name)
    doc = inspect.getdoc(obj) or ""
    assert "\nExamples\n--------\n" in doc, f"{name}: no Examples section"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return
    arguments = [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    if arguments:  # a class may list its fields as Attributes (a pydantic model's __init__ takes **kwargs)
        assert "\nParameters\n----------\n" in doc or (inspect.isclass(obj) and "\nAttributes\n----------\n" in doc), \
            f"{name}: no Parameters section"
    if inspect.isfunction(obj):
        assert "\nReturns\n-------\n" in doc or "\nYields\n------\n" in doc, f"{name}: no Returns/Yields section"


@pytest.mark.parametrize("name", _public_names())
def test_public_docstring_examples_run(name, tmp_path, monkeypatch):
    """Each Examples section runs as written, in an empty folder (the examples write small files there)."""
    import doctest

    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(_public_object(name), name, globs={})
    assert any(t.examples for t in tests), f"{name}: no runnable example"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} example lines failed (output above)"


def test_ng_segment_is_the_function_whatever_was_imported_first():
    """Once ``napari_gradcamo.segment`` (the subpackage) is imported, the package attribute is that module; it is
    callable and runs the function, so ``ng.segment(image, settings)`` works whatever was imported first."""
    import subprocess
    import sys

    code = "import napari_gradcamo as ng; ng.SegmentationSettings; print(callable(ng.segment))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
