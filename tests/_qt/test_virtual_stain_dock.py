"""The Virtual stain dock: a brightfield layer and a model file in, one image layer per stain out."""

import numpy as np
import pytest

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A synthetic brightfield field and a small seeded (untrained) virtual-stain checkpoint."""
    import torch

    from napari_gradcamo.virtual_stain.checkpoint import VirtualStainModel, save_model
    from napari_gradcamo.virtual_stain.data import StainScaling, synthetic_pairs
    from napari_gradcamo.virtual_stain.diffusion import Schedule
    from napari_gradcamo.virtual_stain.model import ClassifierConfig, NoisyClassifier, UNetConfig, build_unet

    pair = synthetic_pairs(2, 1, 2, size=64, n_cells=4)[0]
    torch.manual_seed(0)
    config = UNetConfig(n_classes=2, widths=[8, 16, 16], groups=4)
    cconf = ClassifierConfig(n_classes=2, widths=[8, 16, 16], groups=4)
    model = VirtualStainModel(build_unet(config).eval(), config, Schedule(), StainScaling.fit([pair.stains]),
                              ["DNA", "ER", "RNA", "AGP", "Mito"], ["control", "treated"], [-4.0, 0.0, 4.0],
                              NoisyClassifier(cconf).eval(), cconf)
    path = save_model(tmp_path_factory.mktemp("vs") / "model.safetensors", model)
    return pair, path


def test_dock_adds_one_layer_per_stain(make_napari_viewer, demo, tmp_path):
    from napari_gradcamo._qt.virtual_stain_dock import VirtualStainDock

    pair, path = demo
    viewer = make_napari_viewer()
    viewer.add_image(pair.brightfield, name="brightfield", colormap="gray")
    dock = VirtualStainDock(viewer)
    dock.synchronous = True
    viewer.window.add_dock_widget(dock, name="Virtual stain")
    assert dock.run() is False and "model" in dock.panel.status.text()  # nothing loaded yet: refused, not crashed
    assert dock.load_model(str(path))
    assert [dock.klass.itemText(i) for i in range(dock.klass.count())] == ["— no label —", "control", "treated"]
    dock.klass.setCurrentIndex(2)
    dock.guidance.setValue(1.0)
    dock.steps.setValue(3)
    assert dock.run()
    names = [layer.name for layer in viewer.layers]
    assert names == ["brightfield"] + [f"{s} (virtual)" for s in ("DNA", "ER", "RNA", "AGP", "Mito")]
    stains = [viewer.layers[n] for n in names[1:]]
    assert all(layer.data.shape == (64, 64) and np.isfinite(layer.data).all() for layer in stains)
    assert stains[0].metadata["gradcamo_channel"] == "DNA"
    assert "5 virtual stain layers" in dock.panel.status.text()
    first = stains[0].data.copy()
    dock.seed.setValue(7)
    assert dock.run()  # a second run updates the same layers
    assert len(viewer.layers) == 6 and not np.array_equal(first, viewer.layers["DNA (virtual)"].data)
    shot = viewer.screenshot(str(tmp_path / "virtual_stain.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[2] == 4


def test_dock_refuses_a_wrong_file(make_napari_viewer, tmp_path):
    from napari_gradcamo._qt.virtual_stain_dock import VirtualStainDock

    viewer = make_napari_viewer()
    dock = VirtualStainDock(viewer)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a model")
    assert dock.load_model(str(bad)) is False
    assert "safetensors" in dock.panel.status.text() and dock.model is None


def test_cancel_mid_prediction_adds_no_layer(make_napari_viewer, demo):
    """The dock runs the core's sampling steps directly (no second thread): Cancel acts at the next step."""
    from napari_gradcamo._qt.virtual_stain_dock import VirtualStainDock

    pair, path = demo
    viewer = make_napari_viewer()
    viewer.add_image(pair.brightfield, name="brightfield", colormap="gray")
    dock = VirtualStainDock(viewer)
    dock.synchronous = True
    assert dock.load_model(str(path))
    dock.steps.setValue(5)
    seen, step = [], dock.panel.step

    def step_then_cancel(done, total, message=""):
        seen.append((done, total))
        step(done, total, message)
        if done == 2:
            dock.panel.cancel_button.click()

    dock.panel.step = step_then_cancel
    assert dock.run()
    assert seen == [(1, 5), (2, 5)]
    assert "cancelled" in dock.panel.status.text() and [layer.name for layer in viewer.layers] == ["brightfield"]
    assert dock.run_button.isEnabled() and not dock.panel.cancel_button.isEnabled()
