"""Virtual staining: brightfield rendering, the diffusers U-Net, training, sampling, guidance, metrics, files."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from napari_gradcamo.synthetic.brightfield import brightfield_stack, focal_plane, render_brightfield  # noqa: E402
from napari_gradcamo.synthetic.generator import generate_field  # noqa: E402
from napari_gradcamo.virtual_stain import evaluate as ev  # noqa: E402
from napari_gradcamo.virtual_stain.checkpoint import VirtualStainModel, load_model, save_model  # noqa: E402
from napari_gradcamo.virtual_stain.data import StainScaling, cell_crops, synthetic_pairs  # noqa: E402
from napari_gradcamo.virtual_stain.diffusion import Schedule, sample, train_denoiser  # noqa: E402
from napari_gradcamo.virtual_stain.model import (  # noqa: E402
    ClassifierConfig,
    NoisyClassifier,
    UNetConfig,
    VirtualStainError,
    build_unet,
)

TINY = dict(widths=[8, 16, 16], groups=4)


@pytest.fixture(scope="module")
def field():
    return generate_field(5, shape=(16, 96, 96), voxel_size=(1.0, 1.0, 1.0), n_cells=6, treatment=1, n_classes=2)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(11, 4, 2, size=64, n_cells=4)


@pytest.fixture(scope="module")
def scaling(pairs):
    return StainScaling.fit([p.stains for p in pairs])


def _highpass(plane):
    from scipy import ndimage as ndi

    return plane - ndi.gaussian_filter(plane, 8)


def test_brightfield_shows_cell_edges_that_flip_through_focus(field):
    from scipy import ndimage as ndi

    planes = render_brightfield(field, (-4.0, 0.0, 4.0))
    assert planes.shape == (3, 96, 96) and planes.dtype == np.float32 and np.isfinite(planes).all()
    cells = field.labels[focal_plane(field)] > 0
    rim = ndi.binary_dilation(cells, iterations=2) & ~ndi.binary_erosion(cells, iterations=2)
    far = ~ndi.binary_dilation(cells, iterations=8)
    assert rim.any() and far.any()
    above = np.abs(_highpass(planes[2]))
    assert above[rim].mean() > 2.5 * above[far].mean()  # defocused edges stand out of the noise
    # phase contrast reverses sign between the planes below and above focus
    below, over = _highpass(planes[0])[rim], _highpass(planes[2])[rim]
    assert np.corrcoef(below, over)[0, 1] < -0.3
    stack = brightfield_stack(field)
    assert stack.shape == field.labels.shape and np.isfinite(stack).all()
    assert np.array_equal(render_brightfield(field, (4.0,)), render_brightfield(field, (4.0,)))


def test_brightfield_refuses_bad_defocus(field):
    with pytest.raises(ValueError, match="defocus_um"):
        render_brightfield(field, (float("nan"),))


def test_unet_forward_with_and_without_class():
    torch.manual_seed(0)
    labelled = build_unet(UNetConfig(n_classes=2, **TINY))
    x = torch.randn(2, 8, 32, 32)
    t = torch.tensor([10, 500])
    a = labelled(x, t, class_labels=torch.tensor([0, 0])).sample
    b = labelled(x, t, class_labels=torch.tensor([1, 1])).sample
    assert a.shape == (2, 5, 32, 32)
    assert not torch.allclose(a, b)  # the class reaches the output through AdaGN
    unlabelled = build_unet(UNetConfig(**TINY))
    assert unlabelled(x, t).sample.shape == (2, 5, 32, 32)
    assert unlabelled.config.resnet_time_scale_shift == "scale_shift"
    with pytest.raises(ValueError):
        unlabelled(x, t, class_labels=torch.tensor([0, 1]))


def test_training_lowers_the_loss(pairs, scaling):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(n_classes=2, **TINY))
    losses = train_denoiser(unet, pairs, scaling, Schedule(), steps=60, crop=32, batch=4, lr=2e-3, seed=0)
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15])


def test_ddim_and_ddpm_sampling_are_finite_and_reproducible(pairs, scaling):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(n_classes=2, **TINY))
    crops = cell_crops(pairs, scaling, 32, per_field=1)
    bf = crops.brightfield[:2]
    a = sample(unet, Schedule(), bf, classes=[0, 1], steps=4, seed=3)
    b = sample(unet, Schedule(), bf, classes=[0, 1], steps=4, seed=3)
    c = sample(unet, Schedule(), bf, classes=[0, 1], steps=4, seed=4)
    assert a.shape == (2, 5, 32, 32) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.allclose(a, c)
    d = sample(unet, Schedule(), bf, classes=None, sampler="ddpm", steps=4, seed=3)
    assert np.isfinite(d).all() and np.array_equal(d, sample(unet, Schedule(), bf, sampler="ddpm", steps=4, seed=3))
    with pytest.raises(VirtualStainError, match="multiple"):
        sample(unet, Schedule(), np.zeros((1, 3, 30, 30), np.float32), steps=2)


def _p_true(classifier, stains, k):
    with torch.no_grad():
        logits = classifier(torch.as_tensor(stains), torch.zeros(len(stains), dtype=torch.long))
    return torch.softmax(logits, 1)[:, k].mean().item()


def test_guidance_moves_samples_towards_the_class(pairs, scaling):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(**TINY))
    classifier = NoisyClassifier(ClassifierConfig(n_classes=2, **TINY)).eval()
    bf = cell_crops(pairs, scaling, 32, per_field=1).brightfield[:4]
    for prediction, scale in (("epsilon", 30.0), ("sample", 300.0)):
        plain = sample(unet, Schedule(), bf, steps=8, seed=1, prediction=prediction)
        for k in (0, 1):
            guided = sample(unet, Schedule(), bf, classifier=classifier, guidance_scale=scale,
                            guidance_classes=[k] * len(bf), steps=8, seed=1, prediction=prediction)
            assert _p_true(classifier, guided, k) > _p_true(classifier, plain, k) + 0.005
    with pytest.raises(VirtualStainError, match="classifier"):
        sample(unet, Schedule(), bf, guidance_scale=1.0, guidance_classes=[0] * len(bf), steps=2)


def test_metrics_on_known_cases():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 5, 32, 32)).astype(np.float32)
    same = ev.image_metrics(x, x)
    assert same["pcc"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert same["mse"] == 0 and same["mae"] == 0
    assert ev.image_metrics(-x, x)["pcc"] == pytest.approx(-1.0)
    assert ev.image_metrics(x + 0.1, x)["mae"] == pytest.approx(0.1, rel=1e-4)
    # two well-separated classes of profiles: every nearest neighbour shares the class
    classes = np.array([0, 0, 0, 1, 1, 1])
    prof = np.where(classes[:, None] == 0, 1.0, -1.0) * np.ones((6, 4)) + rng.normal(0, 0.05, (6, 4))
    m = ev.matching(prof, classes, top=2)
    assert m["nn_matches"] == 6 and m["top2_matches"] == 6 and m["mtdist"] < 0.05
    feats = rng.normal(size=(50, 6))
    assert ev.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert ev.frechet_distance(feats + 3.0, feats) > 10
    # a label effect only inside cells
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 8:20, 8:20] = True
    with_label = x[:2].copy()
    with_label[:, :, 8:20, 8:20] += 0.5
    share = ev.label_signal(with_label, x[:2], masks)
    assert share["label_share_in_cells"] == pytest.approx(1.0)
    assert share["background_pixels"] == pytest.approx(1 - 144 / 1024)


def test_guidance_gradcamo_scores_are_shares(pairs, scaling):
    torch.manual_seed(0)
    classifier = NoisyClassifier(ClassifierConfig(n_classes=2, **TINY)).eval()
    crops = cell_crops(pairs, scaling, 32, per_field=1)
    rows = ev.guidance_gradcamo(classifier, crops.stains, crops.cell_masks, crops.classes, other_masks=crops.labels > 0)
    assert len(rows) == len(crops.classes)
    for row in rows:
        if np.isfinite(row["gradcamo"]):
            total = row["gradcamo"] + row["neighbour_share"] + row["background_share"] + row["outside_share"]
            assert 0 <= row["gradcamo"] <= 1 and total == pytest.approx(1.0)
        assert 0 <= row["prob_class"] <= 1


def _tiny_model(scaling, labelled=True):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(n_classes=2 if labelled else None, **TINY))
    cconf = ClassifierConfig(n_classes=2, **TINY)
    return VirtualStainModel(unet.eval(), UNetConfig(n_classes=2 if labelled else None, **TINY), Schedule(), scaling,
                             ["DNA", "ER", "RNA", "AGP", "Mito"], ["control", "treated"], [-4.0, 0.0, 4.0],
                             NoisyClassifier(cconf).eval(), cconf)


def test_checkpoint_round_trip_is_atomic_and_validated(tmp_path, pairs, scaling):
    from safetensors.torch import save_file

    model = _tiny_model(scaling)
    path = save_model(tmp_path / "vs.safetensors", model)
    assert [p.name for p in tmp_path.iterdir()] == ["vs.safetensors"]  # no temporary file left behind
    loaded = load_model(path)
    bf = pairs[0].brightfield[:, :40, :36]
    a = model.predict_image(bf, klass=1, guidance_scale=1.0, steps=3, seed=2)
    b = loaded.predict_image(bf, klass=1, guidance_scale=1.0, steps=3, seed=2)
    assert a.shape == (5, 40, 36) and np.array_equal(a, b)
    with pytest.raises(VirtualStainError, match="exists"):
        save_model(path, model)
    with pytest.raises(VirtualStainError, match="class"):
        loaded.predict_image(bf, klass=5, steps=2)
    # metadata that names an unknown field is refused, never silently used
    meta = model.metadata()
    meta["unet"]["evil"] = 1
    state = {k: v.contiguous() for k, v in model.unet.state_dict().items()}
    save_file({f"unet.{k}": v for k, v in state.items()}, str(tmp_path / "bad.safetensors"),
              metadata={"napari_gradcamo_virtual_stain": json.dumps(meta)})
    with pytest.raises(VirtualStainError, match="unknown keys"):
        load_model(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VirtualStainError, match="not a virtual-stain"):
        load_model(tmp_path / "other.safetensors")


def test_cli_train_predict_and_user_errors(tmp_path, capsys):
    from napari_gradcamo.cli import main

    data = tmp_path / "data"
    assert main(["virtual-stain", "synthetic", str(data), "--fields", "2", "--classes", "2"]) == 0
    model = tmp_path / "m.safetensors"
    args = ["virtual-stain", "train", "--manifest", str(data / "manifest.csv"), "--out", str(model), "--steps", "2",
            "--classifier-steps", "2", "--widths", "8", "16", "16"]
    assert main(args) == 0 and model.exists()
    assert main(args) == 2  # never overwrite silently
    bf = sorted(data.glob("*_brightfield.tif"))[0]
    out = tmp_path / "pred.tif"
    assert main(["virtual-stain", "predict", str(bf), "--model", str(model), "--out", str(out), "--class", "class1",
                 "--steps", "2"]) == 0
    import tifffile

    assert tifffile.imread(out).shape == (5, 96, 96)
    assert main(["virtual-stain", "predict", str(bf), "--model", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "p2.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
