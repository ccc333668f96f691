"""Property-based tests over every reader of a file the user did not write.

Random and mutated files (truncated, bytes flipped, wrong JSON types, huge declared shapes, NaN/inf, odd
dtypes, deeply nested JSON, YAML aliases) must give a correct result or the project's typed error: never
another exception, never a hang. Each example runs under a hard time limit (``property_helpers.time_limit``,
SIGALRM: a hang fails instead of blocking CI); examples are derandomized (the same cases on every run, in CI
too), not shrunk, and few, so the whole module stays well under a minute.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.io.lazy import open_image, open_labels
from napari_gradcamo.io.ome_zarr import has_label_image, open_group, read_plate, write_plate
from napari_gradcamo.models.bioimageio import check_yaml
from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata
from napari_gradcamo.output.results_folder import (
    ResultsFolder,
    ResultsFolderError,
    read_results_folder,
    write_results_folder,
)
from napari_gradcamo.segment.field_list import ManifestError, read_manifest
from property_helpers import HUGE, JSON, damaged_bytes, mutated, nested_json, outcome

# no shrinking: a failing case is reported as found (shrinking a case that hits the time limit would rerun it
# for minutes)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])



# ------------------------------------------------------------------------------------------ results folder


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory):
    from napari_gradcamo.audit.run import CellCam

    labels = np.zeros((2, 10, 10), np.int64)
    labels[:, 1:4, 1:4] = 5
    labels[:, 5:9, 5:9] = 2**40
    table = pd.DataFrame({"label": [5, 2**40], "gradcamo": [0.5, 0.25]})
    cams = {5: CellCam(5, np.ones((1, 2, 2), np.float32), (0, 1, 1), (2, 3, 3))}
    image = np.random.default_rng(1).random((2, 2, 10, 10)).astype(np.float32)
    return write_results_folder(tmp_path_factory.mktemp("rf") / "audit",
                                ResultsFolder(image, ["DNA", "RNA"], (1, 1, 1), labels, table, cams, "m", {"a": 1}))


FOLDER_FILES = ["results.json", "masks.tif", "image.tif", "cams.npz", "gradcamo.parquet", "run.json"]


@PROPERTY
@given(data=st.data(), name=st.sampled_from(FOLDER_FILES))
def test_results_folder_with_a_damaged_file(results_folder, data, name):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(results_folder, Path(scratch) / "audit"))
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(data.draw(damaged_bytes(original)))
        got = outcome(lambda: read_results_folder(folder), ResultsFolderError)
        if not isinstance(got, Exception):  # read: then it is exactly what was saved where it was not touched
            assert got.labels.dtype.kind in "iu" and got.labels.min() >= 0
            assert set(got.table["label"]) <= set(np.unique(got.labels).tolist())


@PROPERTY
@given(data=st.data(), name=st.sampled_from(["results.json", "run.json"]))
def test_results_folder_with_mutated_json(results_folder, data, name):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(results_folder, Path(scratch) / "audit"))
        valid = json.loads((folder / name).read_text())
        text = data.draw(st.one_of(mutated(valid).map(json.dumps), JSON.map(json.dumps),
                                   st.integers(100, 5000).map(nested_json)))
        (folder / name).write_text(text)
        got = outcome(lambda: read_results_folder(folder), ResultsFolderError)
        if not isinstance(got, Exception):
            assert len(got.channel_names) == got.image.shape[0] and all(v > 0 for v in got.voxel_size)


@PROPERTY
@given(ids=st.lists(st.integers(-2**63, 2**64 - 1), min_size=1, max_size=3),
       dtype=st.sampled_from(["int8", "uint16", "int32", "uint64", "int64", "float32", "float64"]))
def test_results_folder_with_tampered_masks(results_folder, ids, dtype):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(results_folder, Path(scratch) / "audit"))
        masks = np.zeros((2, 10, 10), dtype)
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        for k, value in enumerate(ids):
            if info is not None:
                value = min(max(value, info.min), info.max)
            masks[:, k * 3: k * 3 + 2, :2] = value
        tifffile.imwrite(folder / "masks.tif", masks)
        got = outcome(lambda: read_results_folder(folder), ResultsFolderError)
        if not isinstance(got, Exception):
            np.testing.assert_array_equal(got.labels, masks)  # never cast, wrapped or truncated


# ---------------------------------------------------------------------------------------------- OME-Zarr


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    labels = np.zeros((2, 16, 16), np.uint16)
    labels[:, 2:7, 2:7] = 1
    return write_plate(tmp_path_factory.mktemp("zarr") / "p.zarr", "P", [
        {"row": "B", "column": "02", "image": np.arange(2 * 2 * 16 * 16, dtype=np.uint16).reshape(2, 2, 16, 16),
         "channel_names": ["DNA", "RNA"], "voxel_size": (1, .5, .5), "labels": labels}], chunks=(1, 1, 8, 8))


def read_everything(plate_path: Path):
    """Every OME-Zarr reader on the plate and its one field, the pixels and labels read in full."""
    _, fields = read_plate(plate_path)
    image = open_image(fields[0].path)
    np.asarray(image.data[:, :1, :8, :8])  # a window, as a crop reads it (the test must not allocate a whole
    # declared array itself)
    has_label_image(fields[0].path)
    return open_labels(fields[0].path)


ZARR_JSONS = ["zarr.json", "B/02/zarr.json", "B/02/0/zarr.json", "B/02/0/0/zarr.json", "B/02/0/labels/zarr.json",
              "B/02/0/labels/cells/zarr.json", "B/02/0/labels/cells/0/zarr.json"]


@PROPERTY
@given(data=st.data(), name=st.sampled_from(ZARR_JSONS))
def test_ome_zarr_with_mutated_metadata(plate, data, name):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(shutil.copytree(plate, Path(scratch) / "p.zarr"))
        valid = json.loads((path / name).read_text())
        text = data.draw(st.one_of(mutated(valid).map(json.dumps), st.integers(100, 3000).map(nested_json),
                                   damaged_bytes(json.dumps(valid).encode()).map(lambda b: b.decode("latin-1"))))
        (path / name).write_text(text, encoding="latin-1")
        got = outcome(lambda: read_everything(path), ImageError)
        if not isinstance(got, Exception):
            assert got.ndim == 3 and got.dtype.kind in "iu"


@PROPERTY
@given(data=st.data(), array=st.sampled_from(["B/02/0/0", "B/02/0/labels/cells/0"]))
def test_ome_zarr_with_damaged_chunks_shapes_and_dtypes(plate, data, array):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(shutil.copytree(plate, Path(scratch) / "p.zarr"))
        meta_path = path / array / "zarr.json"
        meta = json.loads(meta_path.read_text())
        change = data.draw(st.sampled_from(["chunk", "shape", "dtype"]))
        if change == "chunk":
            chunk = data.draw(st.sampled_from(sorted(p for p in (path / array / "c").rglob("*") if p.is_file())))
            chunk.write_bytes(data.draw(damaged_bytes(chunk.read_bytes())))
        elif change == "shape":
            meta["shape"] = [data.draw(HUGE) for _ in meta["shape"]]
            meta_path.write_text(json.dumps(meta))
        else:
            meta["data_type"] = data.draw(st.sampled_from(["bool", "int8", "uint64", "float16", "float64",
                                                           "complex64", "string", "nonsense"]))
            meta_path.write_text(json.dumps(meta))
        got = outcome(lambda: read_everything(path), ImageError)
        if not isinstance(got, Exception):
            assert got.ndim == 3


@PROPERTY
@given(values=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 3.0, 0.0]), min_size=1,
                       max_size=4), dtype=st.sampled_from(["float32", "float64"]))
def test_ome_zarr_float_images_with_non_finite_values(tmp_path, values, dtype):
    from napari_gradcamo.io.images import FLOAT32_MAX

    with tempfile.TemporaryDirectory() as scratch:
        pixels = np.ones((1, 2, 8, 8), dtype)
        with np.errstate(over="ignore"):
            pixels.flat[: len(values)] = np.asarray(values).astype(dtype)
        root = open_group(Path(scratch) / "f.zarr", mode="w")
        from napari_gradcamo.io.ome_zarr import write_image

        write_image(root, "img", pixels, ["DNA"], (1, 1, 1))
        got = outcome(lambda: open_image(Path(scratch) / "f.zarr" / "img"), ImageError)
        bad = (~np.isfinite(pixels)).any() or np.abs(pixels[np.isfinite(pixels)]).max() > FLOAT32_MAX
        assert isinstance(got, Exception) == bool(bad)  # refused exactly when the pixels cannot be audited


# --------------------------------------------------------------------------------------- YAML and JSON


@PROPERTY
@given(width=st.integers(1, 12), levels=st.integers(1, 12), extra=st.text(max_size=40))
def test_rdf_yaml_with_aliases_never_hangs(width, levels, extra):
    lines = [f'l0: &l0 [{", ".join(["lol"] * width)}]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    text = "\n".join(lines) + "\n" + extra
    got = outcome(lambda: check_yaml(text, "rdf.yaml"), CheckpointError)
    aliases, expanded = width * (levels - 1), width ** levels
    if not isinstance(got, Exception):
        assert aliases <= 64 and expanded <= 200_000


@PROPERTY
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_rdf_yaml_random_text(text):
    outcome(lambda: check_yaml(text, "rdf.yaml"), CheckpointError)


@pytest.fixture(scope="module")
def valid_metadata():
    from napari_gradcamo.models.bundled import bundled_model_path
    from napari_gradcamo.models.checkpoint import load_checkpoint

    return json.loads(json.dumps(load_checkpoint(bundled_model_path("honest")).metadata.model_dump()))


@PROPERTY
@given(data=st.data())
def test_checkpoint_metadata_mutated(valid_metadata, data):
    from napari_gradcamo.models.checkpoint import _parse_json

    text = data.draw(st.one_of(mutated(valid_metadata).map(json.dumps), st.integers(50, 20_000).map(nested_json)))

    def read():
        return ModelMetadata.from_dict(_parse_json(text, "metadata"), "a file")

    got = outcome(read, CheckpointError)
    if not isinstance(got, Exception):
        assert len(got.crop_shape) == 3 and got.class_names and got.channel_names


# ------------------------------------------------------------------------------------------- manifests

CSV_CELLS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@PROPERTY
@given(header=st.lists(st.sampled_from(["image", "Class", "well", "plate", "site", "masks", "label", "x", ""]),
                       max_size=6),
       rows=st.lists(st.lists(CSV_CELLS, max_size=6), max_size=4),
       raw=st.none() | st.binary(max_size=200))
def test_manifest_random_csv(header, rows, raw):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "m.csv"
        (Path(scratch) / "a.tif").write_bytes(b"")
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
        got = outcome(lambda: read_manifest(path), ManifestError)
        if not isinstance(got, Exception):
            assert len(got) and {"image", "class", "well", "group", "site"} <= set(got.columns)
            assert all(Path(p).exists() for p in got["image"])
