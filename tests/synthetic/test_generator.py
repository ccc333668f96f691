"""Tests of the synthetic 3D Cell Painting generator: ground truth, class signal and confound."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gradcamo.io.images import Image
from napari_gradcamo.synthetic.generator import (
    CONFOUND_CHANNELS,
    STAINS,
    SyntheticField,
    class_strength,
    generate_dataset,
    generate_field,
    well_name,
)

SMALL = dict(shape=(20, 128, 128), n_cells=6)


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different cell ids that are face neighbours somewhere."""
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        m = (x > 0) & (y > 0) & (x != y)
        pairs |= set(zip(np.minimum(x[m], y[m]).tolist(), np.maximum(x[m], y[m]).tolist()))
    return pairs


def border_cells(labels: np.ndarray) -> set[int]:
    edges = [labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    return {int(v) for e in edges for v in np.unique(e) if v}


def far_background(field: SyntheticField, margin=(3, 6, 6)) -> np.ndarray:
    """Background voxels at least ``margin`` voxels away from every cell."""
    grown = ndi.binary_dilation(field.labels > 0, np.ones(tuple(2 * m + 1 for m in margin), bool))
    return ~grown


def mito_fragment_size(field: SyntheticField) -> float:
    """Mean size (voxels) of 3D connected bright-Mito objects in the cytoplasm (top 10 %)."""
    cyto = (field.labels > 0) & (field.nuclei == 0)
    mito = field.image.data[STAINS.index("Mito")]
    bright = (mito > np.percentile(mito[cyto], 90)) & cyto
    _, n = ndi.label(bright)
    return bright.sum() / n


# --------------------------------------------------------------------------------------------


def test_deterministic_for_a_seed():
    a = generate_field(11, treatment=1, confound="background", **SMALL)
    b = generate_field(11, treatment=1, confound="background", **SMALL)
    c = generate_field(12, treatment=1, confound="background", **SMALL)
    np.testing.assert_array_equal(a.image.data, b.image.data)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    assert a.image.metadata == b.image.metadata
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.image.data, c.image.data)


def test_shapes_dtypes_names_metadata():
    f = generate_field(
        3, shape=(24, 192, 192), n_cells=12, treatment=1, n_classes=3, confound="background",
        voxel_size=(1.0, 0.5, 0.5), plate="P7", well="C05", site=3,
    )
    img = f.image
    assert isinstance(img, Image)
    assert img.data.shape == (5, 24, 192, 192)
    assert img.data.dtype == np.float32
    assert img.channel_names == list(STAINS) == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert img.voxel_size == (1.0, 0.5, 0.5)
    md = img.metadata
    assert (md["plate"], md["well"], md["site"], md["treatment"], md["confound"]) == ("P7", "C05", 3, 1, "background")
    assert md["confound_class"] == 1 and md["n_classes"] == 3 and md["cell_signal"] is True
    assert f.labels.shape == f.nuclei.shape == (24, 192, 192)
    assert f.labels.dtype == f.nuclei.dtype == np.uint32
    assert f.treatment == 1
    # values: finite, non-negative, integer-valued, within uint16
    d = img.data
    assert np.isfinite(d).all()
    assert d.min() >= 0 and d.max() <= 65535
    np.testing.assert_array_equal(d, np.rint(d))
    # every channel has real dynamic range, background carries a camera offset
    for c in range(5):
        assert np.percentile(d[c][f.labels > 0], 99) > 2 * np.median(d[c][f.labels == 0])
        assert np.median(d[c][f.labels == 0]) > 80


def test_labels_cells_touch_border_and_contain_nuclei():
    f = generate_field(5)  # default (24, 192, 192), 12 cells
    labels, nuclei = f.labels, f.nuclei
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(0, 13))
    assert f.n_cells == 12 == f.image.metadata["n_cells"]
    # neighbours touch (shared borders between different labels) and some cells are cut by the border
    assert len(touching_pairs(labels)) >= 2
    assert len(border_cells(labels)) >= 1
    # nuclei lie inside their own cell, one per cell, smaller than the cell
    assert np.all(labels[nuclei > 0] == nuclei[nuclei > 0])
    assert nucleus_voxels_touching_other_cells(labels, nuclei) == 0  # nuclei are never cut by neighbours
    nvol = np.bincount(nuclei.ravel(), minlength=13)[1:]
    cvol = np.bincount(labels.ravel(), minlength=13)[1:]
    assert (nvol > 0).all()
    assert (nvol < 0.5 * cvol).all()
    # 3D: every cell spans several z planes; background exists above and below the cells
    for i in range(1, 13):
        planes = np.nonzero((labels == i).any(axis=(1, 2)))[0]
        assert planes.size >= 5
    assert not labels[0].any() and not labels[-1].any()
    assert 0.25 < (labels > 0).any(0).mean() < 0.8  # cells cover part of the field, not all of it


def test_voxel_size_sets_physical_cell_size():
    coarse = generate_field(2, shape=(16, 96, 96), voxel_size=(1.0, 1.0, 1.0), n_cells=6)
    fine = generate_field(2, shape=(16, 96, 96), voxel_size=(1.0, 0.5, 0.5), n_cells=6)
    v_coarse = np.bincount(coarse.nuclei.ravel())[1:].mean()
    v_fine = np.bincount(fine.nuclei.ravel())[1:].mean()
    assert 2.5 < v_fine / v_coarse < 6  # xy pixels are half as big: about 4x the voxels
    assert coarse.image.voxel_size == (1.0, 1.0, 1.0)


def er_contrast(field: SyntheticField) -> float:
    """Mean |x-gradient| / mean intensity of ER inside the cytoplasm (reticulum texture contrast)."""
    er = field.image.data[STAINS.index("ER")]
    cyto = (field.labels > 0) & (field.nuclei == 0)
    inner = ndi.binary_erosion(cyto, np.ones((1, 5, 5), bool))
    pairs = inner[:, :, 1:] & inner[:, :, :-1]
    return np.abs(np.diff(er, axis=2))[pairs].mean() / er[inner].mean()


def nucleus_voxels_touching_other_cells(labels: np.ndarray, nuclei: np.ndarray) -> int:
    bad = 0
    for axis in range(3):
        a, n = np.moveaxis(labels, axis, 0), np.moveaxis(nuclei, axis, 0)
        for own, other, nuc in ((a[:-1], a[1:], n[:-1]), (a[1:], a[:-1], n[1:])):
            bad += int(((nuc > 0) & (other > 0) & (other != own)).sum())
    return bad


def _cell_stats(treatment, cell_signal, seeds=(0, 1, 2), n_classes=3):
    rows = []
    for seed in seeds:
        f = generate_field(seed, treatment=treatment, n_classes=n_classes, cell_signal=cell_signal, **SMALL)
        nuc = f.nuclei > 0
        rows.append(
            (
                np.bincount(f.nuclei.ravel())[1:].mean(),
                f.image.data[STAINS.index("DNA")][nuc].mean(),
                mito_fragment_size(f),
                er_contrast(f),
            )
        )
    return np.mean(rows, axis=0)


def test_class_signal_is_graded_inside_cells():
    stats = np.array([_cell_stats(k, True) for k in range(3)])
    nuc_volume, dna, mito_size, er = stats.T
    # nuclei grow, DNA brightens, mitochondria fragment (smaller objects), the ER reticulum coarsens
    # (higher texture contrast once blurred by the PSF) with the class index
    assert np.all(np.diff(nuc_volume) > 0.1 * nuc_volume[0])
    assert np.all(np.diff(dna) > 0.1 * dna[0])
    assert np.all(np.diff(mito_size) < 0)
    assert mito_size[2] < 0.85 * mito_size[0]
    assert np.all(np.diff(er) > 0.03 * er[0])
    assert nuc_volume[2] > 1.4 * nuc_volume[0]
    assert class_strength(0, 3) == 0 and class_strength(2, 3) == 1 and class_strength(0, 1) == 0


def test_no_class_signal_in_cells_when_cell_signal_false():
    stats = np.array([_cell_stats(k, False) for k in range(3)])
    np.testing.assert_allclose(stats, np.broadcast_to(stats[0], stats.shape))
    # stronger: same seed, no confound -> the images are identical whatever the treatment
    a = generate_field(4, treatment=0, n_classes=3, cell_signal=False, **SMALL)
    b = generate_field(4, treatment=2, n_classes=3, cell_signal=False, **SMALL)
    np.testing.assert_array_equal(a.image.data, b.image.data)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    assert a.treatment == 0 and b.treatment == 2
    # and the same seed with the signal on does differ inside the cells
    c = generate_field(4, treatment=2, n_classes=3, cell_signal=True, **SMALL)
    assert (c.nuclei > 0).sum() > 1.3 * (a.nuclei > 0).sum()


def test_confound_is_only_outside_cells():
    clean = generate_field(8, treatment=1, confound=None, **SMALL)
    conf = generate_field(8, treatment=1, confound="background", **SMALL)
    np.testing.assert_array_equal(clean.labels, conf.labels)
    diff = np.abs(conf.image.data - clean.image.data)
    # deep inside cells (beyond the PSF's reach) nothing changes, in any channel
    deep = ndi.binary_erosion(clean.labels > 0, np.ones((7, 5, 5), bool))
    assert deep.sum() > 1000
    assert diff[:, deep].max() == 0
    # channels without the confound are untouched everywhere
    for i, name in enumerate(STAINS):
        if name not in CONFOUND_CHANNELS:
            assert diff[i].max() == 0
    # the confound channels change in the background
    bg = far_background(clean)
    for name in CONFOUND_CHANNELS:
        i = STAINS.index(name)
        assert (conf.image.data[i][bg] - clean.image.data[i][bg]).mean() > 50


def _bg_stats(field: SyntheticField, name="AGP"):
    ch = field.image.data[STAINS.index(name)]
    bg = far_background(field)
    # stripe orientation: mean |gradient| along x vs y, restricted to background voxel pairs
    gx = np.abs(np.diff(ch, axis=2))[bg[:, :, 1:] & bg[:, :, :-1]].mean()
    gy = np.abs(np.diff(ch, axis=1))[bg[:, 1:] & bg[:, :-1]].mean()
    return ch[bg].mean(), gx / gy


def test_background_statistics_follow_class_only_with_confound():
    seeds = (0, 1)
    on = np.array([[_bg_stats(generate_field(s, treatment=k, n_classes=3, confound="background", **SMALL))
                    for s in seeds] for k in range(3)]).mean(1)
    off = np.array([[_bg_stats(generate_field(s, treatment=k, n_classes=3, confound=None, **SMALL))
                     for s in seeds] for k in range(3)]).mean(1)
    # confound on: background brightness rises with the class, stripes turn with the class
    assert np.all(np.diff(on[:, 0]) > 20)
    assert on[0, 1] > 2.0  # class 0: stripes vary along x
    assert on[1, 1] < on[0, 1] and on[2, 1] < on[0, 1]
    # confound off: the background does not depend on the class (same seeds -> only PSF leakage)
    assert np.ptp(off[:, 0]) < 2.0
    assert np.all(np.abs(off[:, 1] - 1) < 0.1)  # isotropic noise


def test_confound_class_override_breaks_the_shortcut():
    # cells carry no class; the only difference between these fields is the background class
    t1 = generate_field(6, treatment=1, n_classes=2, confound="background", cell_signal=False, **SMALL)
    t0_bg1 = generate_field(6, treatment=0, n_classes=2, confound="background", cell_signal=False,
                            confound_class=1, **SMALL)
    t0 = generate_field(6, treatment=0, n_classes=2, confound="background", cell_signal=False, **SMALL)
    np.testing.assert_array_equal(t1.image.data, t0_bg1.image.data)
    assert t0_bg1.treatment == 0 and t0_bg1.confound_class == 1
    assert t0_bg1.image.metadata["confound_class"] == 1 and t0_bg1.image.metadata["treatment"] == 0
    assert not np.array_equal(t0.image.data, t0_bg1.image.data)


def test_generate_dataset_layout_and_breaking():
    ds = generate_dataset(1, 8, n_classes=2, sites_per_well=2, confound="background", **SMALL)
    assert len(ds) == 8
    md = [f.image.metadata for f in ds]
    assert [m["well"] for m in md] == ["B02", "B02", "B03", "B03", "B04", "B04", "B05", "B05"]
    assert [m["site"] for m in md] == [1, 2] * 4
    assert [f.treatment for f in ds] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert all(m["plate"] == "SYN01" for m in md)
    assert all(f.confound_class == f.treatment for f in ds)
    # each class in several wells; fields differ from each other
    for k in range(2):
        assert len({m["well"] for m, f in zip(md, ds) if f.treatment == k}) == 2
    assert not np.array_equal(ds[0].image.data, ds[1].image.data)
    # deterministic
    again = generate_dataset(1, 8, n_classes=2, sites_per_well=2, confound="background", **SMALL)
    np.testing.assert_array_equal(ds[5].image.data, again[5].image.data)
    # broken confound for a test set
    broken = generate_dataset(1, 4, n_classes=2, sites_per_well=1, confound="background",
                              confound_class="mismatch", **SMALL)
    assert all(f.confound_class == (f.treatment + 1) % 2 for f in broken)
    fixed = generate_dataset(1, 4, n_classes=3, sites_per_well=1, confound="background", confound_class=2, **SMALL)
    assert [f.confound_class for f in fixed] == [2, 2, 2, 2]
    rnd = generate_dataset(1, 12, n_classes=3, sites_per_well=2, confound="background",
                           confound_class="random", shape=(12, 48, 48), n_cells=2)
    per_well = {}
    for f in rnd:
        per_well.setdefault(f.image.metadata["well"], set()).add(f.confound_class)
    assert all(len(v) == 1 for v in per_well.values())  # one background class per well
    assert well_name(0) == "B02" and well_name(22) == "C02"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(treatment=2, n_classes=2),
        dict(treatment=-1),
        dict(confound="stripes"),
        dict(confound="background", confound_class=5, n_classes=2),
        dict(shape=(10, 64)),
        dict(voxel_size=(1.0, 0.0, 0.5)),
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_field(0, **kwargs)


def test_small_and_odd_geometries_are_valid():
    for kwargs in (dict(shape=(8, 40, 40), n_cells=1), dict(shape=(12, 64, 96), n_cells=0),
                   dict(shape=(30, 100, 100), voxel_size=(0.5, 0.3, 0.3), n_cells=4, n_classes=1)):
        f = generate_field(9, confound="background", **kwargs)
        assert np.isfinite(f.image.data).all()
        assert f.image.data.shape == (5, *kwargs["shape"])
        ids = np.unique(f.labels)
        np.testing.assert_array_equal(ids, np.arange(ids.size))  # consecutive, no gaps
        assert np.all(f.labels[f.nuclei > 0] == f.nuclei[f.nuclei > 0])


def test_anisotropic_xy_voxels_keep_cells_round_in_micrometres():
    f = generate_field(3, shape=(16, 128, 64), voxel_size=(1.0, 0.5, 1.0), n_cells=5)
    extents = []
    for i in range(1, f.n_cells + 1):
        _, y, x = np.nonzero(f.nuclei == i)
        extents.append(((y.max() - y.min() + 1) * 0.5, (x.max() - x.min() + 1) * 1.0))
    ey, ex = np.mean(extents, axis=0)
    assert 0.7 < ey / ex < 1.4  # nuclei have similar sizes in µm along y and x


def test_debris_confound_is_round_specks_outside_cells_whose_number_follows_the_class():
    from napari_gradcamo.synthetic.generator import DEBRIS_CHANNELS

    counts = []
    for k in range(3):
        field = generate_field(8, treatment=k, n_classes=3, confound="debris", cell_signal=False, **SMALL)
        base = generate_field(8, treatment=k, n_classes=3, confound=None, cell_signal=False, **SMALL)
        diff = field.image.data - base.image.data
        deep = ndi.binary_erosion(field.labels > 0, np.ones((7, 5, 5), bool))
        assert np.abs(diff[:, deep]).max() == 0  # nothing inside cells
        for i, name in enumerate(STAINS):
            if name not in DEBRIS_CHANNELS:
                assert np.abs(diff[i]).max() == 0
        specks = diff[STAINS.index("DNA")] > 300  # well above the shot noise (sd ≈ 30 at this level)
        _, n = ndi.label(specks)
        counts.append(n)
        # round: a speck's extent along y and x is the same on average (no orientation)
        gy = np.abs(np.diff(specks.astype(np.int8), axis=1)).sum()
        gx = np.abs(np.diff(specks.astype(np.int8), axis=2)).sum()
        assert 0.8 < gy / max(gx, 1) < 1.25
    assert counts[0] < counts[1] < counts[2], counts
