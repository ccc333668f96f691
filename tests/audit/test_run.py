"""The audit pipeline on awkward input: every problem named, nothing lost."""

import numpy as np
import pytest
import torch

from napari_gradcamo.audit.run import AuditSettings, iter_audit, rescore, resolve_channels, run_audit
from napari_gradcamo.io.images import ImageError, make_image
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.output import results
from napari_gradcamo.progress import CancelToken

CHANNELS = ["DNA", "ER", "RNA"]


def _bundle(classes=("ctrl", "drug")):
    torch.manual_seed(0)
    meta = ModelMetadata("small-cnn-3d", list(classes), CHANNELS, [4, 16, 16], architecture_kwargs={"width": 4})
    return ModelBundle(build_model(meta).eval(), meta)


def _scene(n_cells=6, channels=CHANNELS):
    rng = np.random.default_rng(0)
    image = make_image(rng.random((len(channels), 6, 40, 60)).astype(np.float32), "CZYX", channels)
    labels = np.zeros((6, 40, 60), np.uint32)
    for i in range(n_cells):
        y, x = 4 + 12 * (i // 5), 2 + 12 * (i % 5)
        labels[1:5, y:y + 8, x:x + 8] = i + 1
    return image, labels


def test_every_cell_gets_a_row_with_the_schema():
    image, labels = _scene()
    result = run_audit(image, labels, _bundle(), AuditSettings(batch_size=4))
    table = result.table
    assert list(table.columns) == results.column_order(["ctrl", "drug"])
    assert sorted(table["label"]) == list(range(1, 7)) and set(result.cams) == set(range(1, 7))
    assert table["gradcamo"].between(0, 1).all()
    shares = table[["gradcamo", "neighbour_share", "background_share", "outside_share"]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=1e-6)
    np.testing.assert_allclose(table[["prob_ctrl", "prob_drug"]].sum(axis=1), 1.0, atol=1e-5)
    assert (table["status"] == results.STATUS_AUDITED).all()


def test_border_cells_are_padded_and_their_outside_attention_reported():
    image, labels = _scene()
    table = run_audit(image, labels, _bundle()).table.set_index("label")
    assert table.loc[1, "touches_border"] and table.loc[1, "padded_fraction"] > 0
    assert table.loc[1, "outside_share"] > 0
    assert not np.isnan(table.loc[1, "gradcamo"])


def test_single_cell_and_chosen_target_class():
    image, labels = _scene(n_cells=1)
    table = run_audit(image, labels, _bundle(), AuditSettings(target_class="drug")).table
    assert len(table) == 1 and table.loc[0, "target_class"] == "drug"
    with pytest.raises(ValueError, match="Unknown target class 'tox'"):
        run_audit(image, labels, _bundle(), AuditSettings(target_class="tox"))


def test_channel_count_mismatch_is_refused_with_both_lists():
    image, labels = _scene(channels=["DNA", "ER"])
    with pytest.raises(ImageError, match=r"expects 3 channels \(DNA, ER, RNA\) but the image has 2"):
        run_audit(image, labels, _bundle())


def test_channel_names_mapped_by_name_or_explicitly():
    assert resolve_channels(["AGP", "RNA", "ER", "DNA"], CHANNELS) == [3, 2, 1]
    assert resolve_channels(["ch0", "ch1", "ch2"], CHANNELS) == [0, 1, 2]
    with pytest.raises(ImageError, match="do not name the model's channels RNA"):
        resolve_channels(["DNA", "ER", "Mito"], CHANNELS)
    assert resolve_channels(["DNA", "ER", "Mito"], CHANNELS, explicit=[0, 1, 2]) == [0, 1, 2]
    with pytest.raises(ImageError, match="channel map"):
        resolve_channels(["DNA", "ER", "Mito"], CHANNELS, explicit=[0, 1, 7])


def test_label_problems_are_refused():
    image, labels = _scene()
    with pytest.raises(ImageError, match="differs"):
        run_audit(image, labels[:, :30], _bundle())
    with pytest.raises(ImageError, match="empty"):
        run_audit(image, np.zeros_like(labels), _bundle())
    with pytest.raises(ImageError, match=r"\[99\]"):
        run_audit(image, labels, _bundle(), only_labels=[1, 99])


def test_cancel_mid_run_keeps_finished_batches():
    image, labels = _scene()
    token = CancelToken()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done >= 2:
            token.cancel()

    result = run_audit(image, labels, _bundle(), AuditSettings(batch_size=2), progress=progress, cancel=token)
    assert result.cancelled and seen == [2]
    assert sorted(result.table["label"]) == [1, 2] and set(result.cams) == {1, 2}


def test_iter_audit_yields_batches_as_they_finish():
    image, labels = _scene()
    batches = list(iter_audit(image, labels, _bundle(), AuditSettings(batch_size=4)))
    assert [b.done for b in batches] == [4, 6] and [len(b.rows) for b in batches] == [4, 2]


def test_rescore_after_mask_edit_uses_cached_map():
    image, labels = _scene()
    result = run_audit(image, labels, _bundle())
    cam = result.cams[3]
    before = rescore(cam, labels)
    assert before.gradcamo == pytest.approx(result.table.set_index("label").loc[3, "gradcamo"], rel=1e-5)
    edited = labels.copy()
    edited[edited == 3] = 0  # erase the cell
    edited[1:5, 2:12, 26:36] = 3  # repaint it bigger, same centre region
    after = rescore(cam, edited)
    grid = cam.on_crop_grid()
    from napari_gradcamo.crops.extract import window

    crop, _ = window(edited, cam.origin, cam.crop_shape)
    assert after.gradcamo == pytest.approx(grid[crop == 3].sum() / grid.sum(), rel=1e-5)
    assert after.chance > before.chance


def test_nan_image_never_reaches_the_model():
    data = np.random.default_rng(0).random((3, 6, 40, 60)).astype(np.float32)
    data[0, 2, 10, 10] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        make_image(data, "CZYX", CHANNELS)
