"""OME-Zarr: NGFF 0.5 written (0.4 still read); damaged chunks, malformed attributes, absurd declared shapes
and non-finite pixels are ImageErrors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.io.lazy import open_image, open_labels
from napari_gradcamo.io.ome_zarr import has_label_image, open_group, read_plate, write_image, write_plate


def _labels():
    labels = np.zeros((2, 16, 16), np.uint16)
    labels[:, 2:7, 2:7] = 1
    labels[:, 9:14, 8:13] = 2
    return labels


def _image(dtype=np.uint16):
    return (np.random.default_rng(0).random((2, 2, 16, 16)) * 1000).astype(dtype)


def test_plates_are_written_as_ngff_0_5_and_read_back(tmp_path):
    path = write_plate(tmp_path / "p.zarr", "P1", [
        {"row": "B", "column": "02", "image": _image(), "channel_names": ["DNA", "RNA"], "voxel_size": (2, .5, .5),
         "labels": _labels()},
        {"row": "B", "column": "02", "image": _image(), "channel_names": ["DNA", "RNA"], "voxel_size": (2, .5, .5)}])
    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["attributes"]["ome"]["version"] == "0.5"
    well = json.loads((path / "B" / "02" / "zarr.json").read_text())["attributes"]["ome"]
    assert well == {"version": "0.5", "well": {"images": [{"path": "0"}, {"path": "1"}]}}
    image = json.loads((path / "B" / "02" / "0" / "zarr.json").read_text())["attributes"]["ome"]
    assert image["version"] == "0.5" and "version" not in image["multiscales"][0]
    level = json.loads((path / "B" / "02" / "0" / "0" / "zarr.json").read_text())
    assert level["dimension_names"] == ["c", "z", "y", "x"]
    label = json.loads((path / "B/02/0/labels/cells/zarr.json").read_text())["attributes"]["ome"]
    assert label["image-label"] == {"source": {"image": "../../"}}
    assert not list(path.rglob(".zattrs")) and not list(path.rglob(".zarray"))  # nothing of Zarr v2

    name, fields = read_plate(path)
    assert name == "P1" and [(f.well, f.site) for f in fields] == [("B02", 1), ("B02", 2)]
    opened = open_image(fields[0].path)
    assert opened.channel_names == ["DNA", "RNA"] and opened.voxel_size == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(opened.data), _image())
    np.testing.assert_array_equal(open_labels(fields[0].path), _labels())
    assert has_label_image(fields[0].path) and not has_label_image(fields[1].path)


def _write_v04_plate(path):
    """A plate as NGFF 0.4 writers make it: Zarr v2, .zattrs, a version on every object."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["plate"] = {"version": "0.4", "name": "OLD", "rows": [{"name": "C"}], "columns": [{"name": "3"}],
                           "wells": [{"path": "C/3", "rowIndex": 0, "columnIndex": 0}], "field_count": 1}
    well = root.require_group("C").require_group("3")
    well.attrs["well"] = {"version": "0.4", "images": [{"path": "0"}]}
    image = well.create_group("0")
    image.create_array("0", shape=(2, 2, 16, 16), chunks=(1, 1, 8, 8), dtype=np.uint16)[...] = _image()
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    image.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3, .25, .25]}]}]}]
    image.attrs["omero"] = {"channels": [{"label": "DNA"}, {"label": "AGP"}]}
    labels = image.create_group("labels")
    labels.attrs["labels"] = ["nuclei"]
    nuclei = labels.create_group("nuclei")
    nuclei.create_array("0", shape=(2, 16, 16), chunks=(1, 8, 8), dtype=np.uint16)[...] = _labels()
    nuclei.attrs["multiscales"] = [{"version": "0.4", "axes": axes[1:], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [3, .25, .25]}]}]}]
    nuclei.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    return path


def test_ngff_0_4_plates_are_still_read(tmp_path):
    name, fields = read_plate(_write_v04_plate(tmp_path / "old.zarr"))
    assert name == "OLD" and [(f.row, f.column, f.site) for f in fields] == [("C", "3", 1)]
    image = open_image(fields[0].path)
    assert image.channel_names == ["DNA", "AGP"] and image.voxel_size == (3.0, 0.25, 0.25)
    np.testing.assert_array_equal(open_labels(fields[0].path), _labels())


def _field(tmp_path, image=None, labels=True):
    group = open_group(tmp_path / "f.zarr", mode="w")
    write_image(group, "img", _image() if image is None else image, ["DNA", "RNA"], (1, 1, 1),
                labels=_labels() if labels else None, chunks=(1, 1, 8, 8))
    return tmp_path / "f.zarr" / "img"


def _garble_first_chunk(array_folder):
    chunk = next(p for p in sorted(array_folder.joinpath("c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"\x02\x01garbage" * 8)


def test_a_garbage_chunk_in_the_image_or_the_labels_is_an_image_error(tmp_path):
    field = _field(tmp_path)
    _garble_first_chunk(field / "0")
    image = open_image(field)  # integer pixels: opened lazily, the damage shows when the chunk is read
    with pytest.raises(ImageError, match=r"img/0: a chunk cannot be decoded \(RuntimeError"):
        np.asarray(image.data[:, :1, :8, :8])  # was a blosc/zstd RuntimeError traceback
    _garble_first_chunk(field / "labels" / "cells" / "0")
    with pytest.raises(ImageError, match="labels/cells/0: a chunk cannot be decoded"):
        open_labels(field)


def test_attributes_that_are_a_json_array_are_an_image_error(tmp_path):
    old = _write_v04_plate(tmp_path / "old.zarr")
    (old / "C" / "3" / "0" / ".zattrs").write_text("[1, 2, 3]")
    with pytest.raises(ImageError, match="not a readable Zarr group|attributes are"):
        open_image(old / "C" / "3" / "0")  # was TypeError
    (old / ".zattrs").write_text('{"plate": [1]}')
    with pytest.raises(ImageError, match="no NGFF 'plate' metadata"):
        read_plate(old)
    field = _field(tmp_path)
    meta = json.loads((field / "zarr.json").read_text())
    (field / "zarr.json").write_text(json.dumps({**meta, "attributes": {"ome": ["not", "an", "object"]}}))
    with pytest.raises(ImageError, match="'ome' attributes are not a JSON object"):
        open_image(field)
    (field / "zarr.json").write_text(json.dumps({**meta, "attributes": {"ome": {"version": "0.9"}}}))
    with pytest.raises(ImageError, match="NGFF version '0.9' is not one this version reads"):
        open_image(field)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["datasets"][0].update(coordinateTransformations=[{"type": "scale", "scale": ["a", 1, 1, 1]}]),
     "does not give one positive size per axis"),
    (lambda m: m["datasets"][0].update(coordinateTransformations=[{"type": "scale", "scale": [1, 1, 1, 1e300]}]),
     "does not give one positive size per axis"),
    (lambda m: m.update(axes=[1, 2, 3, 4]), "axes must be a list of axis objects"),
    (lambda m: m.update(axes=[{"name": "c"}, {"name": "c"}, {"name": "y"}, {"name": "x"}]), "do not describe"),
    (lambda m: m["datasets"][0].update(path=7), "lists no dataset path"),
    (lambda m: m["datasets"][0].update(path="labels"), "is a group, not an array"),
])
def test_malformed_multiscales_are_image_errors(tmp_path, edit, message):
    field = _field(tmp_path)
    meta = json.loads((field / "zarr.json").read_text())
    edit(meta["attributes"]["ome"]["multiscales"][0])
    (field / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ImageError, match=message):
        open_image(field)


def test_labels_declaring_an_absurd_shape_are_refused_before_allocating(tmp_path):
    field = _field(tmp_path)
    group = zarr.open_group(str(field / "labels" / "cells"), mode="r+")
    group.create_array("0", shape=(4000, 2**20, 2**20), chunks=(64, 8192, 8192), dtype=np.uint8, overwrite=True,
                       dimension_names=("z", "y", "x"))  # 3.9 PiB declared, nothing written: was a 21.8 TiB traceback
    with pytest.raises(ImageError, match=r"labels/cells \(shape \(4000, 1048576, 1048576\)\) needs 3.9 PiB but"):
        open_labels(field)


def test_float_images_with_nan_or_beyond_float32_are_refused(tmp_path):
    nan = _image(np.float32)
    nan[1, 0, 3, 3] = np.nan
    with pytest.raises(ImageError, match="holds 1 NaN/Inf voxels"):
        open_image(_field(tmp_path / "a", nan))
    huge = _image(np.float64)
    huge[0, 1, 2, 2] = 1e300
    with pytest.raises(ImageError, match="beyond float32's range"):
        open_image(_field(tmp_path / "b", huge))
    fine = _image(np.float64)
    np.testing.assert_allclose(np.asarray(open_image(_field(tmp_path / "c", fine)).data), fine)


def test_an_image_declaring_a_trillion_chunks_is_refused_at_once(tmp_path):
    import time

    field = _field(tmp_path)
    meta = json.loads((field / "0" / "zarr.json").read_text())
    meta["shape"] = [2**40, 2, 16, 16]  # was a hang: dask walked 2**40 chunks to build its graph
    (field / "0" / "zarr.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"declares 8,796,093,022,208 chunks"):
        open_image(field)
    assert time.perf_counter() - start < 5


def test_an_empty_dimension_beside_a_huge_one_is_refused(tmp_path):
    field = _field(tmp_path)
    meta = json.loads((field / "0" / "zarr.json").read_text())
    meta["shape"] = [2**62, 2**40, 10**30, 0]  # no chunk in all, yet dask listed 2**62 along the first axis
    (field / "0" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ImageError, match=r"it is empty \(a dimension of size 0\)"):
        open_image(field)  # was MemoryError (found by the property tests)
