"""The regularisers of train/regularizer.py: the outside-gradient penalty on an analytic model, context
randomisation, the loop's switches, and a short no-signal training (the research result: docs/regularizer.md)."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_gradcamo.cli import build_parser
from napari_gradcamo.cli.train import _outside_gradient_weight
from napari_gradcamo.crops.datasets import MASK_CELL, MASK_OTHER, CropSet
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelMetadata
from napari_gradcamo.train.loop import evaluate, train_classifier
from napari_gradcamo.train.regularizer import (
    input_gradients,
    log_probability_sum,
    outside_gradient_penalty,
    randomise_context,
    regularizer_record,
)

CROP = (4, 16, 16)


def cell_mask(n=1):
    mask = torch.zeros(n, *CROP, dtype=torch.bool)
    mask[:, :, 4:12, 4:12] = True
    return mask


class Linear(nn.Module):
    """One logit z = Σ W·x (the other class's logit 0, or a single sigmoid logit): input gradients are
    closed-form, ∂(log p0 + log p1)/∂x = (1 − 2σ(z)) · W."""

    def __init__(self, weight, head="softmax"):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.head = head

    def forward(self, x):
        z = (x * self.weight).flatten(1).sum(dim=1, keepdim=True)
        return z if self.head == "sigmoid-binary" else torch.cat([torch.zeros_like(z), z], dim=1)


def penalty_of(model, x, mask, head="softmax"):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    return outside_gradient_penalty(input_gradients(head, logits, x), mask)


@pytest.mark.parametrize("head", ["softmax", "sigmoid-binary"])
def test_penalty_and_its_gradient_are_zero_when_every_input_gradient_lies_in_the_cell(head):
    torch.manual_seed(0)
    mask = cell_mask(3)
    weight = torch.randn(2, *CROP) * mask[0]  # the logit reads only the cell
    model = Linear(weight, head)
    penalty, share = penalty_of(model, torch.randn(3, 2, *CROP), mask, head)
    assert float(penalty.detach()) == 0.0 and (share == 0).all()
    (grad,) = torch.autograd.grad(penalty, model.weight)
    assert float(grad.abs().max()) == 0.0


@pytest.mark.parametrize("head", ["softmax", "sigmoid-binary"])
def test_penalty_equals_its_closed_form_and_pushes_the_outside_weights_to_zero(head):
    torch.manual_seed(1)
    mask = cell_mask(3)
    weight = torch.randn(2, *CROP) * 0.05
    model = Linear(weight.clone(), head)
    x = torch.randn(3, 2, *CROP)
    penalty, share = penalty_of(model, x, mask, head)
    z = (x * weight).flatten(1).sum(dim=1)
    outside = ~mask[0]
    expected = ((1 - 2 * torch.sigmoid(z)) ** 2).mean() * (weight[:, outside] ** 2).sum()
    assert float(penalty.detach()) > 0
    torch.testing.assert_close(penalty, expected, rtol=1e-5, atol=1e-9)
    expected_share = (weight[:, outside] ** 2).sum() / (weight ** 2).sum()
    torch.testing.assert_close(share, expected_share.expand(3), rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(penalty, model.weight)
    assert float(grad[:, outside].abs().sum()) > 0  # the penalty reaches the weights that read the context
    # a gradient step lowers the penalty
    with torch.no_grad():
        model.weight -= 1e-2 * grad / grad.norm()
    assert float(penalty_of(model, x, mask, head)[0].detach()) < float(penalty.detach())


def test_log_probability_sum_matches_the_heads():
    z = torch.tensor([[0.3, -1.2, 2.0]])
    p = torch.softmax(z, dim=1)
    torch.testing.assert_close(log_probability_sum("softmax", z), p.log().sum(dim=1))
    s = torch.sigmoid(z)
    torch.testing.assert_close(log_probability_sum("multilabel", z), (s.log() + (1 - s).log()).sum(dim=1))
    torch.testing.assert_close(log_probability_sum("sigmoid-binary", z[:, :1]), (s[:, 0].log() + (1 - s[:, 0]).log()))


def test_context_randomisation_keeps_each_cell_and_takes_the_context_of_another_crop():
    rng = np.random.default_rng(0)
    n = 64
    crops = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None, None], (n, 1, *CROP)).copy()
    cell = cell_mask(n).numpy()
    out = randomise_context(crops, cell, np.random.default_rng(3))
    assert (out[:, 0][cell] == crops[:, 0][cell]).all()
    donors = out[:, 0, 0, 0, 0].astype(int)  # a context voxel names its donor crop
    assert all(np.all(out[i, 0][~cell[i]] == donors[i]) for i in range(n))
    assert sorted(donors.tolist()) == list(range(n))  # a permutation of the batch
    assert (donors != np.arange(n)).mean() > 0.9
    assert np.array_equal(randomise_context(crops, cell, rng, 0.0), crops)
    with pytest.raises(ValueError, match="0..1"):
        randomise_context(crops, cell, rng, 1.5)


# ------------------------------------------------------------------ the loop


def small_cnn(seed=0, width=4, channels=2):
    meta = ModelMetadata("small-cnn-3d", ["a", "b"], [f"ch{i}" for i in range(channels)], list(CROP),
                         architecture_kwargs={"width": width})
    torch.manual_seed(seed)
    return build_model(meta)


def no_signal_crops(n=48, seed=0):
    """Every cell alike; the class only in a texture outside the cell (and the neighbouring cells' mask)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, size=(n, 2, *CROP)).astype(np.float32)
    masks = np.zeros((n, *CROP), np.uint8)
    masks[:, :, 4:12, 4:12] = MASK_CELL
    masks[:, :, :2, :2] = MASK_OTHER
    y = np.arange(n) % 2
    x[:, 0][masks == MASK_CELL] += 1.0  # the cell, the same for both classes
    outside = masks != MASK_CELL
    stripes = np.zeros(CROP, np.float32)
    stripes[:, ::2, :] = 1.0
    for i in np.flatnonzero(y == 1):
        x[i, 1][outside[i]] += 1.5 * stripes[outside[i]]
    return CropSet(x, y.astype(np.int64), np.array([f"w{i % 4}" for i in range(n)]), masks)


def test_zero_weights_are_exactly_plain_training_and_each_regulariser_changes_it():
    data = no_signal_crops(24)
    norm = {"method": "none"}
    weights = {}
    for name, kwargs in (("plain", {}), ("zero", {"outside_gradient_weight": 0.0, "context_randomisation": 0.0}),
                         ("gradient", {"outside_gradient_weight": 1.0}), ("context", {"context_randomisation": 1.0})):
        model = small_cnn(seed=3)
        history = train_classifier(model, data, norm, epochs=2, batch_size=8, seed=5, **kwargs)
        weights[name] = {k: v.clone() for k, v in model.state_dict().items()}
        if name == "gradient":
            assert np.isfinite(history.penalty).all() and min(history.penalty) >= 0
            assert all(0 <= s <= 1 for s in history.outside_gradient_share)
        else:
            assert np.isnan(history.penalty).all()
    for name in ("zero", "gradient", "context"):
        same = all(torch.equal(weights["plain"][k], weights[name][k]) for k in weights["plain"])
        assert same == (name == "zero"), name


def test_regularisers_need_masks():
    data = no_signal_crops(8)
    data.masks = None
    for kwargs in ({"outside_gradient_weight": 1.0}, {"context_randomisation": 0.5}):
        with pytest.raises(ValueError, match="mask"):
            train_classifier(small_cnn(), data, {"method": "none"}, epochs=1, **kwargs)


def test_on_no_signal_data_context_randomisation_leaves_nothing_to_learn():
    """The cells carry no class: the plain model learns the context; with context randomisation the context
    is independent of the class and held-out accuracy stays near chance."""
    train, held_out = no_signal_crops(64, seed=0), no_signal_crops(64, seed=1)
    norm = {"method": "none"}
    accuracy = {}
    for name, kwargs in (("plain", {}), ("context", {"context_randomisation": 1.0})):
        model = small_cnn(seed=0)
        train_classifier(model, train, norm, epochs=6, batch_size=16, seed=0, lr=5e-3, **kwargs)
        accuracy[name] = evaluate(model, held_out, np.arange(len(held_out)), norm)["accuracy"]
    assert accuracy["plain"] >= 0.9, accuracy
    assert abs(accuracy["context"] - 0.5) <= 0.15, accuracy


# ------------------------------------------------------------------ metadata and the CLI


def test_regularizer_record_names_the_kinds():
    assert regularizer_record(0.0, 0.0)["kinds"] == []
    record = regularizer_record(0.5, 1.0)
    assert record["kinds"] == ["outside-gradient", "context-randomisation"]
    assert record["outside_gradient_weight"] == 0.5 and record["context_randomisation"] == 1.0


def train_args(*options):
    return build_parser().parse_args(["train", "m.csv", "--out", "o", *options])


def test_deprecated_gradcamo_weight_warns_and_maps_to_the_outside_gradient_weight():
    with pytest.warns(FutureWarning, match="--outside-gradient-weight"):
        assert _outside_gradient_weight(train_args("--gradcamo-weight", "0.3")) == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _outside_gradient_weight(train_args("--outside-gradient-weight", "0.7")) == 0.7
        assert _outside_gradient_weight(train_args()) == 0.0
    with pytest.raises(ValueError, match="only"):
        _outside_gradient_weight(train_args("--gradcamo-weight", "0.3", "--outside-gradient-weight", "0.3"))
    assert train_args("--context-randomisation", "0.5").context_randomisation == 0.5


def test_cli_refuses_a_context_randomisation_outside_0_1(tmp_path, capsys):
    from napari_gradcamo.cli import main
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    manifest = write_synthetic_manifest(tmp_path / "d", "honest", seed=1, n_fields=2, n_cells=3, shape=(8, 32, 32),
                                        sites_per_well=1)
    assert main(["train", str(manifest), "--out", str(tmp_path / "run"), "--context-randomisation", "2"]) == 2
    assert "0..1" in capsys.readouterr().err


def test_a_run_of_the_removed_gradcamo_penalty_is_not_resumed_silently(tmp_path):
    """A resume.pt written before the rename (config key gradcamo_weight, history column train_gradcamo):
    with the old penalty on, resuming is refused with the fix; with it off, the run resumes."""
    import json as _json

    from napari_gradcamo.progress import Cancelled, CancelToken
    from napari_gradcamo.train.fit import RESUME_FILE, TrainConfig, fit
    from napari_gradcamo.train.resume import load_resume, save_resume

    data = no_signal_crops(32)
    config = TrainConfig(architecture_kwargs={"width": 4}, epochs=2, batch_size=8, val_fraction=0.25, patience=0,
                         device="cpu")

    token = CancelToken()
    with pytest.raises(Cancelled):  # stopped after its first epoch: resume.pt holds one epoch
        fit(data, ["a", "b"], ["c0", "c1"], list(CROP), config, tmp_path, cancel=token,
            epoch_end=lambda epoch, stats: token.cancel())
    path = tmp_path / RESUME_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    old_config = {k: v for k, v in _json.loads(state["config"]).items()
                  if k not in ("outside_gradient_weight", "context_randomisation")}
    history = _json.loads(state["history"])
    assert len(history["loss"]) == 1
    history["train_gradcamo"] = history.pop("outside_gradient_share")
    for weight, refused in ((0.5, True), (0.0, False)):
        save_resume(path, {**state, "config": _json.dumps({**old_config, "gradcamo_weight": weight}),
                           "history": _json.dumps(history)})
        load_resume(path)
        if refused:
            with pytest.raises(ValueError, match="--gradcamo-weight"):
                fit(data, ["a", "b"], ["c0", "c1"], list(CROP), config, tmp_path, resume=True)
        else:
            result = fit(data, ["a", "b"], ["c0", "c1"], list(CROP), config, tmp_path, resume=True)
            assert len(result.history.loss) == 2
