"""Property-based tests of the public Python API (``napari_gradcamo.__all__``), issue 23: random argument types,
values and arrays (NaN/inf, odd dtypes, wrong shapes, empty, huge declared sizes) give a correct result or the
project's typed error (a ``ValueError``: ImageError, CheckpointError, SegmentationError, OutputError, pydantic's
ValidationError; ``FileExistsError`` for an export that would overwrite) — never another exception, never a hang.

Derandomised (the same examples on every run, so CI is reproducible); every example runs under a 20 s alarm.
Run: ``pytest tests/audit/test_properties_api.py`` (~30-60 s on 2 loaded cores).
"""

from __future__ import annotations

import contextlib
import math
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_gradcamo as api
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.output import results
from napari_gradcamo.output.export import ExportExistsError

TYPED = (ValueError, ExportExistsError)
PER_EXAMPLE_S = 20
PROPERTY = settings(derandomize=True, deadline=None, database=None, max_examples=25,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@contextlib.contextmanager
def time_limit(seconds: int = PER_EXAMPLE_S):
    """Fail (not hang) when one example runs longer than ``seconds``."""
    def stop(signum, frame):
        raise TimeoutError(f"one example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def correct_or_typed(call):
    """Run ``call``: return its result, or None when it raised a typed error; anything else fails the test."""
    with time_limit():
        try:
            return call()
        except TYPED:
            return None


CHANNELS = ["DNA", "ER"]
SHAPE = (4, 20, 24)


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    meta = ModelMetadata("small-cnn-3d", ["ctrl", "drug"], CHANNELS, [4, 16, 16], architecture_kwargs={"width": 2})
    return ModelBundle(build_model(meta).eval(), meta)


def _labels():
    labels = np.zeros(SHAPE, np.int32)
    labels[1:3, 2:8, 2:8], labels[1:3, 10:16, 12:18] = 1, 2
    return labels


# ------------------------------------------------------------------ strategies

odd_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=6), st.binary(max_size=4), st.lists(st.integers(-2, 5), max_size=4),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int16, np.int64, np.uint64, np.bool_,
                          np.complex64])


@st.composite
def images(draw):
    """An image argument: right shape or not, any dtype, NaN/inf sprinkled in, an Image, a list or junk."""
    kind = draw(st.sampled_from(["czyx", "zyx", "wrong", "empty", "junk", "image", "list"]))
    dtype = draw(dtypes)
    if kind == "junk":
        return draw(odd_values)
    shape = {"czyx": (2, *SHAPE), "zyx": SHAPE, "empty": (2, 0, 20, 24), "list": (2, *SHAPE)}.get(kind)
    if shape is None:
        shape = draw(st.tuples(*[st.integers(1, 5)] * draw(st.integers(1, 5))))
    data = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True)
                           if np.dtype(dtype).kind in "fc" else None))
    if kind == "image":
        return api.Image(data.astype(np.float32, copy=False) if data.dtype.kind != "c" else data, ["DNA", "ER"])
    return data.tolist() if kind == "list" else data


@st.composite
def label_images(draw):
    kind = draw(st.sampled_from(["good", "good", "dtype", "shape", "junk", "nan", "huge"]))
    labels = _labels()
    if kind == "dtype":
        return labels.astype(draw(dtypes))
    if kind == "shape":
        return labels[:, : draw(st.integers(0, 19))]
    if kind == "junk":
        return draw(odd_values)
    if kind == "nan":
        return np.where(labels > 0, np.nan, 0.0)
    if kind == "huge":
        return labels.astype(np.uint64) * np.uint64(2**63)
    return labels


settings_dicts = st.dictionaries(
    st.sampled_from(["method", "target_layer", "target_class", "batch_size", "device", "threshold", "channel_map",
                     "flag_on", "occlusion", "planes", "treshold"]),
    st.one_of(odd_values, st.sampled_from(["gradcam", "eigencam", "normalised", "lift", "cpu", "auto", "ctrl"])),
    max_size=3)


# ------------------------------------------------------------------ properties


@PROPERTY
@given(image=images(), labels=label_images(), audit=st.one_of(st.none(), settings_dicts, odd_values),
       only=st.one_of(st.none(), odd_values, st.lists(st.integers(-1, 3), min_size=1, max_size=3)))
def test_run_audit_gives_a_table_or_a_typed_error(bundle, image, labels, audit, only):
    result = correct_or_typed(lambda: api.run_audit(image, labels, bundle, audit, only_labels=only))
    if result is not None:  # a correct result: one row per audited cell, scores in range, never a made-up label
        table = result.table
        assert set(table["label"]) <= {1, 2} and table["label"].is_unique
        scores = table["gradcamo"].dropna()
        assert scores.between(0, 1).all()
        assert table["flagged"].dtype == bool


@PROPERTY
@given(cam=hnp.arrays(np.float64, (2, 4, 4), elements=st.one_of(st.floats(-1, 1e308), st.sampled_from([math.nan, math.inf]))),
       mask=st.one_of(hnp.arrays(np.bool_, st.sampled_from([(2, 4, 4), (2, 4, 3), (4, 4)])), odd_values),
       other=st.one_of(st.none(), hnp.arrays(np.bool_, st.sampled_from([(2, 4, 4), (3,)])), odd_values))
def test_score_cam_gives_shares_or_a_typed_error(cam, mask, other):
    score = correct_or_typed(lambda: api.score_cam(cam, mask, other))
    if score is not None and not math.isnan(score.gradcamo):
        assert 0 <= score.gradcamo <= 1 + 1e-9 and 0 <= score.chance <= 1


@PROPERTY
@given(threshold=odd_values, on=st.one_of(st.sampled_from(["gradcamo", "lift", "normalised"]), odd_values),
       scores=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=5))
def test_apply_threshold_flags_or_refuses(threshold, on, scores):
    table = pd.DataFrame({"status": [results.STATUS_AUDITED] * len(scores), "gradcamo": scores, "lift": scores,
                          "normalised": scores})
    flagged = correct_or_typed(lambda: results.apply_threshold(table, threshold, on=on))
    if flagged is not None:
        expected = [math.isnan(s) or s < threshold for s in scores]
        assert flagged["flagged"].tolist() == expected


@PROPERTY
@given(fields=settings_dicts)
def test_audit_settings_validate_or_refuse(fields):
    def make_and_check():
        made = api.AuditSettings(**fields)
        made.validate()
        return made

    made = correct_or_typed(make_and_check) if "treshold" not in fields else None
    if made is not None:
        assert isinstance(made.method, str) and isinstance(made.batch_size, int) and made.batch_size >= 1
        assert math.isfinite(made.threshold) or made.flag_on == "normalised" and made.threshold == -math.inf


@PROPERTY
@given(fields=st.dictionaries(
    st.sampled_from(["diameter", "stitch_threshold", "anisotropy", "flow_threshold", "cellprob_threshold",
                     "min_size", "batch_size", "mode", "normalize_percentiles", "gpu", "nucleus_channel"]),
    odd_values, min_size=1, max_size=3))
def test_segmentation_settings_are_checked_before_cellpose_runs(fields):
    """segment() checks its settings first (validate_settings); called here alone, so no cellpose model runs."""
    from napari_gradcamo.segment.cellpose import validate_settings

    image = api.Image(np.random.default_rng(0).random((1, 2, 8, 8)).astype(np.float32), ["DNA"])
    settings_ = api.SegmentationSettings(**fields)
    if correct_or_typed(lambda: validate_settings(image, settings_) or True):
        for name in ("stitch_threshold", "flow_threshold", "cellprob_threshold"):
            assert math.isfinite(getattr(settings_, name))
        assert settings_.diameter is None or settings_.diameter > 0


def test_segment_is_callable_from_the_package_whatever_was_imported_first():
    import napari_gradcamo.segment.cellpose  # noqa: F401  (makes napari_gradcamo.segment the subpackage)

    image = api.Image(np.ones((1, 1, 4, 4), np.float32), ["DNA"])
    with pytest.raises(ValueError, match="flow_threshold must be a number"):
        api.segment(image, api.SegmentationSettings(flow_threshold="0.4"))


@PROPERTY
@given(data=st.one_of(odd_values, st.dictionaries(
    st.sampled_from(["architecture", "class_names", "channel_names", "crop_shape", "normalization",
                     "architecture_kwargs", "format_version"]),
    st.one_of(odd_values, st.just([10**6] * 3), st.just([2**40, 1, 1]),
              st.just({"method": "fixed", "mean": [0.0, 0.0], "std": [0.0, 1.0]})), max_size=7)))
def test_checkpoint_metadata_from_any_json_is_validated(data):
    base = {"architecture": "small-cnn-3d", "class_names": ["a", "b"], "channel_names": CHANNELS,
            "crop_shape": [4, 16, 16]}
    candidate = {**base, **data} if isinstance(data, dict) else data
    meta = correct_or_typed(lambda: ModelMetadata.from_dict(candidate, "fuzz.json"))
    if meta is not None:
        assert meta.normalization.get("method", "none") != "fixed" or min(meta.normalization["std"]) > 0
        assert int(np.prod(meta.crop_shape)) <= 16_777_216


@PROPERTY
@given(flagged=st.one_of(st.lists(st.booleans(), min_size=2, max_size=2),
                         st.lists(st.sampled_from(["True", "False", "", 0, 1, None, np.nan]), min_size=2, max_size=2)),
       stem=st.one_of(st.sampled_from(["gradcamo", "../..", "a/b", "..", "", "x\x00y"]), odd_values))
def test_export_flagged_exports_exactly_the_flagged_cells_or_refuses(tmp_path_factory, flagged, stem):
    rng = np.random.default_rng(0)
    image = api.Image(rng.random((2, *SHAPE)).astype(np.float32), CHANNELS)
    table = results.conform(pd.DataFrame({"label": [1, 2], "centroid_z": [2.0, 2.0], "centroid_y": [5.0, 13.0],
                                          "centroid_x": [5.0, 15.0]}), ["ctrl", "drug"])
    table["flagged"] = pd.Series(flagged, dtype=object if not all(isinstance(f, bool) for f in flagged) else bool)
    folder = tmp_path_factory.mktemp("export") / "out"
    out = correct_or_typed(lambda: api.export_flagged(folder, image, _labels(), table, crop_shape=(2, 8, 8),
                                                       stem=stem, gallery=False))
    written = {p.resolve() for p in folder.parent.rglob("*") if p.is_file()}
    assert all(folder.resolve() in p.parents for p in written), "nothing is written outside the export folder"
    if out is not None:
        assert isinstance(stem, str) and all(isinstance(f, (bool, np.bool_)) for f in flagged)
        assert sorted(out.cell_files) == [label for label, f in zip([1, 2], flagged) if f]


@PROPERTY
@given(stem=st.one_of(st.sampled_from(["t", "../up", "a/b", ""]), odd_values),
       record=st.one_of(st.none(), st.just({"completed": True}), odd_values),
       column=st.one_of(st.lists(st.integers(-5, 5), min_size=2, max_size=2),
                        st.lists(st.one_of(st.integers(), st.text(max_size=3)), min_size=2, max_size=2)))
def test_write_table_writes_in_its_folder_or_refuses(tmp_path_factory, stem, record, column):
    folder = tmp_path_factory.mktemp("table") / "out"
    table = pd.DataFrame({"label": [1, 2], "extra": column})
    paths = correct_or_typed(lambda: api.write_table(table, folder, stem, record))
    written = [p for p in folder.parent.rglob("*") if p.is_file()]
    assert all(folder.resolve() in p.resolve().parents for p in written)
    if paths is not None:
        csv, parquet = paths
        assert pd.read_parquet(parquet)["label"].tolist() == [1, 2]
