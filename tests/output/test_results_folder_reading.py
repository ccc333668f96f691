"""A saved audit reopens exactly, and a damaged or tampered results folder is refused with a typed error."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_gradcamo.audit.run import CellCam
from napari_gradcamo.output.results_folder import (
    ResultsFolder,
    ResultsFolderError,
    read_results_folder,
    write_results_folder,
)

BIG = 2**40
WRAPS = 2**32 + 3  # uint32 turns it into 3


def saved_audit(tmp_path, ids=(3, WRAPS, BIG), dtype=np.int64, name="audit"):
    labels = np.zeros((2, 12, 12), dtype=dtype)
    labels[:, 1:4, 1:4] = ids[0]
    labels[:, 5:9, 5:9] = ids[1]
    labels[:, 9:12, 0:3] = ids[2]
    image = np.random.default_rng(0).random((2, 2, 12, 12)).astype(np.float32)
    table = pd.DataFrame({"label": np.asarray(ids, dtype=np.int64), "gradcamo": [0.5, 0.25, 0.125]})
    cams = {int(i): CellCam(int(i), np.full((1, 2, 2), float(k), np.float32), (0, 1, 1), (2, 3, 3))
            for k, i in enumerate(ids)}
    folder = write_results_folder(tmp_path / name, ResultsFolder(image, ["DNA", "RNA"], (1.0, 0.5, 0.5), labels,
                                                               table, cams, "m"))
    return folder, labels


def test_label_ids_above_uint32_survive_save_and_reopen(tmp_path):
    folder, labels = saved_audit(tmp_path)
    back = read_results_folder(folder)
    # before the fix: id 2**40 vanished into background and 2**32+3 merged into cell 3 (uint32 cast)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.labels.dtype == np.int64
    assert (back.labels == 3).sum() == (labels == 3).sum() == 18
    assert sorted(back.cams) == [3, WRAPS, BIG]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint64])
def test_every_integer_dtype_is_kept(tmp_path, dtype):
    folder, labels = saved_audit(tmp_path, ids=(1, 2, 7), dtype=dtype)
    back = read_results_folder(folder)
    assert back.labels.dtype == dtype
    np.testing.assert_array_equal(back.labels, labels)


@pytest.mark.parametrize("tampered", [
    np.full((2, 12, 12), -5, dtype=np.int32),
    np.full((2, 12, 12), 3.7, dtype=np.float32),
    np.full((2, 12, 12), 2**64 - 1, dtype=np.uint64),
], ids=["negative", "float", "above-int64"])
def test_tampered_masks_are_refused_not_wrapped(tmp_path, tampered):
    folder, _ = saved_audit(tmp_path)
    tifffile.imwrite(folder / "masks.tif", tampered)
    with pytest.raises(ResultsFolderError, match="masks.tif hold"):
        read_results_folder(folder)


def test_results_json_holding_a_list_is_a_typed_error(tmp_path):
    folder, _ = saved_audit(tmp_path)
    (folder / "results.json").write_text("[1, 2, 3]")
    with pytest.raises(ResultsFolderError, match="holds a JSON list, not the object an audit writes"):
        read_results_folder(folder)  # was AttributeError


def test_deeply_nested_results_json_is_refused_before_recursing(tmp_path):
    folder, _ = saved_audit(tmp_path)
    (folder / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResultsFolderError, match="nests its JSON more than"):
        read_results_folder(folder)


def test_cams_missing_keys_is_a_typed_error(tmp_path):
    folder, _ = saved_audit(tmp_path)
    with np.load(folder / "cams.npz") as data:
        kept = {k: data[k] for k in data.files if k != f"raw_{BIG}"}
    np.savez_compressed(folder / "cams.npz", **kept)
    with pytest.raises(ResultsFolderError, match=f"cams.npz has no 'raw_{BIG}' entry"):
        read_results_folder(folder)  # was KeyError
    np.savez_compressed(folder / "cams.npz", other=np.zeros(2))
    with pytest.raises(ResultsFolderError, match="has no 'labels' entry"):
        read_results_folder(folder)


def test_cams_of_cells_not_in_the_masks_and_garbage_cams_are_refused(tmp_path):
    folder, _ = saved_audit(tmp_path)
    np.savez_compressed(folder / "cams.npz", labels=np.array([99]), raw_99=np.zeros((1, 1, 1), np.float32),
                        origin_99=np.zeros(3, np.int64), crop_99=np.ones(3, np.int64))
    with pytest.raises(ResultsFolderError, match="maps of cells the masks do not hold"):
        read_results_folder(folder)
    (folder / "cams.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ResultsFolderError, match="cams.npz is unreadable"):
        read_results_folder(folder)


def test_a_huge_declared_cam_is_refused_before_allocating(tmp_path):
    folder, _ = saved_audit(tmp_path)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1), np.float32))
    header["shape"] = (2**20, 2**20, 2**10)  # 4 PiB of float32
    with zipfile.ZipFile(folder / "cams.npz", "w") as archive:
        with archive.open("labels.npy", "w") as handle:
            np.lib.format.write_array(handle, np.array([3]))
        with archive.open("raw_3.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
    with pytest.raises(ResultsFolderError, match=r"'raw_3' \(shape .*\) needs 4.0 PiB"):
        read_results_folder(folder)


def test_a_table_listing_cells_that_are_not_in_the_masks_is_refused(tmp_path):
    folder, _ = saved_audit(tmp_path)
    pd.DataFrame({"label": [3, 4, 5], "gradcamo": [0.1, 0.2, 0.3]}).to_parquet(folder / "gradcamo.parquet")
    with pytest.raises(ResultsFolderError, match=r"lists 2 cell\(s\) the masks do not hold \(4, 5\)"):
        read_results_folder(folder)
    pd.DataFrame({"label": ["3"], "gradcamo": [0.1]}).to_parquet(folder / "gradcamo.parquet")
    with pytest.raises(ResultsFolderError, match="'label' column holds"):
        read_results_folder(folder)


def test_writing_refuses_a_table_that_does_not_fit_the_masks(tmp_path):
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, :2, :2] = 1
    with pytest.raises(ResultsFolderError, match=r"masks do not hold \(2\)"):
        write_results_folder(tmp_path / "x", ResultsFolder(np.zeros((1, 1, 4, 4)), ["DNA"], (1, 1, 1), labels,
                                                          pd.DataFrame({"label": [1, 2]})))
    assert not (tmp_path / "x").exists()


def test_damaged_tiffs_and_parquet_are_typed_errors(tmp_path):
    folder, _ = saved_audit(tmp_path)
    (folder / "gradcamo.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ResultsFolderError, match="gradcamo.parquet is unreadable"):
        read_results_folder(folder)
    (folder / "image.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(ResultsFolderError, match="image.tif \\(the image\\) is unreadable"):
        read_results_folder(folder)
    (folder / "image.tif").unlink()
    with pytest.raises(ResultsFolderError, match="image.tif is missing"):
        read_results_folder(folder)


def test_bad_voxel_size_and_run_record_are_typed_errors(tmp_path):
    folder, _ = saved_audit(tmp_path)
    manifest = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**manifest, "voxel_size": [1e30, 1, 1]}))
    with pytest.raises(ResultsFolderError, match="voxel_size"):
        read_results_folder(folder)
    (folder / "results.json").write_text(json.dumps(manifest))
    (folder / "run.json").write_text('"a string"')
    with pytest.raises(ResultsFolderError, match="one run record"):
        read_results_folder(folder)


def test_a_cams_archive_with_a_corrupt_compressed_member_is_a_typed_error(tmp_path):
    folder, _ = saved_audit(tmp_path)
    data = bytearray((folder / "cams.npz").read_bytes())
    start = data.index(b"raw_3.npy") + len("raw_3.npy") + 20  # inside the member's deflated bytes
    data[start:start + 6] = b"\xff\x00\xff\x00\xff\x00"
    (folder / "cams.npz").write_bytes(bytes(data))
    with pytest.raises(ResultsFolderError, match="cams.npz"):
        read_results_folder(folder)  # was zlib.error (found by an exploratory property run)
