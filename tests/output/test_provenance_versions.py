"""The run record's package versions: what importlib.metadata says, looked up once per process."""

from __future__ import annotations

import platform
from importlib import metadata

from napari_gradcamo.output import provenance


def test_versions_are_the_installed_ones_and_looked_up_once(monkeypatch):
    first = provenance.package_versions()
    assert first["python"] == platform.python_version()
    assert first["torch"] == metadata.version("torch") and first["numpy"] == metadata.version("numpy")
    lookups = []
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: lookups.append(name) or real(name))
    second = provenance.package_versions()
    assert lookups == [] and second == first  # remembered, not read from disk again
    second["torch"] = "edited"  # a caller's copy: editing it does not edit the next record's versions
    assert provenance.package_versions()["torch"] == metadata.version("torch")
    assert provenance.start_record("audit", None, None, {}, {})["versions"] == first
