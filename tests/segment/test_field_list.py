"""Manifest CSVs: an empty or unreadable file is a ManifestError that says what a manifest needs."""

from __future__ import annotations

import pytest

from napari_gradcamo.segment.field_list import ManifestError, read_manifest


def test_an_empty_manifest_says_what_it_needs(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(ManifestError, match=r"m.csv is empty; it needs a header row \(image,class,well\)"):
        read_manifest(tmp_path / "m.csv")  # was pandas' "No columns to parse from file"
    (tmp_path / "m.csv").write_text("\n\n   \n")
    with pytest.raises(ManifestError, match="is empty"):
        read_manifest(tmp_path / "m.csv")


def test_a_folder_binary_or_headers_only_manifest_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)
    (tmp_path / "m.csv").write_bytes(b"\xff\xfe\x00\x81image")
    with pytest.raises(ManifestError, match="not a readable CSV"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("image,class,well\n")
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(tmp_path / "m.csv")


def test_a_good_manifest_still_reads(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"")
    (tmp_path / "m.csv").write_text("Image,Class,Well\na.tif,ctrl,A01\n")
    table = read_manifest(tmp_path / "m.csv")
    assert table["image"].tolist() == [str(tmp_path.resolve() / "a.tif")] and table["group"].tolist() == ["/A01"]
