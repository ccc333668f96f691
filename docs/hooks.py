"""MkDocs hook: the API reference pages are generated from the package itself.

``docs/api.md`` holds two markers. ``<!-- public-api -->`` becomes one mkdocstrings block per name in
``napari_gradcamo.__all__``, at the module that defines it (read from ``_EXPORTS`` in the package's
``__init__.py``, without importing it); ``<!-- modules -->`` becomes, for every public subpackage, each
module's docstring. A name or module that moves is followed without editing the page, and one that no longer
resolves fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_gradcamo"


def public_exports() -> dict[str, str]:
    """``_EXPORTS`` of ``napari_gradcamo/__init__.py``: public name -> module that defines it."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("napari_gradcamo/__init__.py has no _EXPORTS mapping")


def _public_api() -> str:
    blocks = []
    for name, module in sorted(public_exports().items(), key=lambda kv: kv[0].lower()):
        blocks.append(f"::: {module}.{name}\n    options:\n      heading_level: 3\n      show_root_full_path: false\n")
    return "\n".join(blocks)


def _modules() -> str:
    out = []
    for sub in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                      and not p.name.startswith("_")):
        out.append(f"### `napari_gradcamo.{sub.name}`\n")
        out.append(f"::: napari_gradcamo.{sub.name}\n    options:\n      members: false\n      show_root_heading: false\n")
        for mod in sorted(m for m in sub.glob("*.py") if not m.name.startswith("_")):
            out.append(f"::: napari_gradcamo.{sub.name}.{mod.stem}\n    options:\n      members: false\n"
                       f"      heading_level: 4\n      show_root_heading: true\n")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- public-api -->" in markdown:
        markdown = markdown.replace("<!-- public-api -->", _public_api())
    if "<!-- modules -->" in markdown:
        markdown = markdown.replace("<!-- modules -->", _modules())
    return markdown


_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>~?\.?(?:[\w.]+\.)?(\w+)</code>")


def on_page_content(html: str, page, config, files) -> str:
    """Docstrings use Sphinx roles (``:func:`~pkg.mod.name```), which the numpy parser leaves as text: show
    the name alone, as code."""
    return _ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", html)
