import numpy as np
import pytest
import tifffile

from napari_gradcamo.io.images import ImageError, as_label_volume, check_labels_match, make_image, read_image


@pytest.mark.parametrize(
    "axes, shape",
    [("ZCYX", (4, 3, 8, 9)), ("CZYX", (3, 4, 8, 9)), ("ZYX", (4, 8, 9)), ("CYX", (3, 8, 9)), ("YX", (8, 9)), ("YXC", (8, 9, 3))],
)
def test_axes_reordered_to_czyx(axes, shape):
    rng = np.random.default_rng(0)
    array = rng.random(shape)
    image = make_image(array, axes)
    assert image.data.ndim == 4 and image.data.dtype == np.float32
    # every voxel value survives, at the place the axes say
    index = {a: i for i, a in enumerate(axes)}
    probe = tuple(1 if a in "CZ" and shape[index[a]] > 1 else 2 for a in axes)
    czyx = tuple(probe[index[a]] if a in index else 0 for a in "CZYX")
    assert image.data[czyx] == pytest.approx(array[probe])


def test_wrong_ndim_and_unknown_axes_are_explained():
    with pytest.raises(ImageError, match="dimensions"):
        make_image(np.zeros((2, 3, 4)), "ZCYX")
    with pytest.raises(ImageError, match="T"):
        make_image(np.zeros((2, 3, 4, 5)), "TZYX")
    with pytest.raises(ImageError, match="guess"):
        make_image(np.zeros((1, 2, 3, 4, 5)))


def test_nan_and_constant_images_are_refused():
    data = np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32)
    data[1, 0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN.*channels \\[1\\]"):
        make_image(data, "CZYX")
    with pytest.raises(ImageError, match="constant"):
        make_image(np.ones((2, 3, 8, 8)), "CZYX")


def test_channel_names_must_match_channels():
    with pytest.raises(ImageError, match="2 channel names"):
        make_image(np.random.rand(3, 4, 4), "CYX", channel_names=["a", "b"])


def test_ome_tiff_roundtrip_keeps_axes_names_and_voxel_size(tmp_path):
    data = np.random.default_rng(2).integers(0, 4000, (6, 2, 16, 20)).astype(np.uint16)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        path, data, metadata={"axes": "ZCYX", "PhysicalSizeZ": 0.5, "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2,
                              "Channel": {"Name": ["DNA", "AGP"]}},
    )
    image = read_image(path)
    assert image.data.shape == (2, 6, 16, 20)
    assert image.channel_names == ["DNA", "AGP"]
    assert image.voxel_size == pytest.approx((0.5, 0.2, 0.2))
    assert image.anisotropy == pytest.approx(2.5)
    np.testing.assert_array_equal(image.data[1, 3], data[3, 1])


def test_labels_checks():
    image = make_image(np.random.rand(2, 4, 8, 8), "CZYX")
    with pytest.raises(ImageError, match="differs"):
        check_labels_match(image, np.ones((4, 8, 9), int))
    with pytest.raises(ImageError, match="empty"):
        check_labels_match(image, np.zeros((4, 8, 8), int))
    with pytest.raises(ImageError, match="negative"):
        as_label_volume(-np.ones((4, 4), int))
    assert as_label_volume(np.ones((4, 5), int)).shape == (1, 4, 5)


def test_16_bit_fields_stay_16_bit_and_crop_as_float32():
    """A uint16 field is kept in its own type (half the memory of float32); its crops equal a float32 copy's."""
    from napari_gradcamo.crops.extract import cell_table, extract_crop

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65535, (2, 3, 20, 20), dtype=np.uint16)
    labels = np.zeros((3, 20, 20), np.uint32)
    labels[1, 5:12, 6:14] = 1
    native, as_float = make_image(pixels, "CZYX"), make_image(pixels.astype(np.float64), "CZYX")
    assert native.data.dtype == np.uint16 and as_float.data.dtype == np.float32
    assert make_image(pixels.astype(np.int32), "CZYX").data.dtype == np.float32  # only 8/16-bit stay integer
    cell = cell_table(labels)[0]
    a, b = extract_crop(native, labels, cell, (3, 16, 16)), extract_crop(as_float, labels, cell, (3, 16, 16))
    assert a.image.dtype == np.float32
    np.testing.assert_array_equal(a.image, b.image)
