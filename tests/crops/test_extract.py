import numpy as np

from napari_gradcamo.crops.extract import cell_table, extract_crop, iter_crops
from napari_gradcamo.io.images import make_image


def _scene():
    rng = np.random.default_rng(3)
    image = make_image(rng.random((2, 10, 40, 40)), "CZYX")
    labels = np.zeros((10, 40, 40), np.uint32)
    labels[3:7, 15:25, 15:25] = 1  # central
    labels[3:7, 25:30, 15:25] = 2  # touching neighbour
    labels[0:3, 0:4, 36:40] = 3  # in a corner
    return image, labels


def test_centred_crop_holds_image_cell_and_neighbour():
    image, labels = _scene()
    cells = {c.label: c for c in cell_table(labels)}
    assert cells[1].volume == 4 * 10 * 10 and cells[1].centroid == (4.5, 19.5, 19.5)
    crop = extract_crop(image, labels, cells[1], (4, 16, 16))
    z0, y0, x0 = crop.origin
    np.testing.assert_array_equal(crop.image, image.data[:, z0:z0 + 4, y0:y0 + 16, x0:x0 + 16])
    assert crop.padding == ((0, 0), (0, 0), (0, 0)) and crop.padded_fraction == 0
    assert crop.cell_mask.sum() == np.sum(labels[z0:z0 + 4, y0:y0 + 16, x0:x0 + 16] == 1)
    assert crop.other_mask.any() and not (crop.other_mask & crop.cell_mask).any()


def test_border_cell_is_zero_padded_and_padding_recorded():
    image, labels = _scene()
    corner = [c for c in cell_table(labels) if c.label == 3][0]
    crop = extract_crop(image, labels, corner, (6, 16, 16))
    (zb, za), (yb, ya), (xb, xa) = crop.padding
    assert zb > 0 and yb > 0 and xa > 0
    assert np.all(crop.image[:, :zb] == 0) and np.all(crop.image[:, :, :, -xa:] == 0)
    assert crop.cell_mask.sum() == 3 * 4 * 4  # the whole cell is still in its crop
    assert 0 < crop.padded_fraction < 1


def test_2d_image_gives_single_plane_crops():
    rng = np.random.default_rng(4)
    image = make_image(rng.random((3, 30, 30)), "CYX")
    labels = np.zeros((1, 30, 30), np.uint16)
    labels[0, 5:12, 5:12] = 1
    labels[0, 20:28, 18:26] = 2
    crops = list(iter_crops(image, labels, (1, 12, 12)))
    assert [c.label for c in crops] == [1, 2]
    assert crops[0].image.shape == (3, 1, 12, 12)
    assert crops[1].cell_mask.sum() == 64


def test_cell_table_with_sparse_ids_equals_the_dense_numbering():
    """Ids far above the compaction limit locate the same cells (centroid, volume, box, pieces) as 1..N."""
    from napari_gradcamo.crops.extract import cell_table

    rng = np.random.default_rng(3)
    dense = np.zeros((4, 40, 40), np.int64)
    for k in range(1, 9):
        z, y, x = rng.integers(0, 3), rng.integers(0, 34), rng.integers(0, 34)
        dense[z : z + 2, y : y + 5, x : x + 5] = k
    dense[3, 0, 0] = 5  # a second piece of cell 5
    present = np.unique(dense)[1:]
    sparse_ids = {int(k): int(v) for k, v in zip(present, np.linspace(70_000, 2**40, len(present)).astype(np.int64))}
    sparse = np.zeros_like(dense)
    for k, v in sparse_ids.items():
        sparse[dense == k] = v
    a, b = cell_table(dense), cell_table(sparse)
    assert [sparse_ids[c.label] for c in a] == [c.label for c in b]
    for ca, cb in zip(a, b):
        assert (ca.centroid, ca.volume, ca.bbox, ca.pieces) == (cb.centroid, cb.volume, cb.bbox, cb.pieces)
