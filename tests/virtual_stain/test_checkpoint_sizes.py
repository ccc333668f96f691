"""A virtual-stain checkpoint's declared network size is checked before anything is allocated."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from napari_gradcamo.virtual_stain.checkpoint import HEADER_KEY, VirtualStainModel, load_model, save_model  # noqa: E402
from napari_gradcamo.virtual_stain.data import StainScaling  # noqa: E402
from napari_gradcamo.virtual_stain.diffusion import Schedule  # noqa: E402
from napari_gradcamo.virtual_stain.model import UNetConfig, VirtualStainError, build_unet  # noqa: E402

TINY = {"widths": [8, 16], "groups": 4}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = UNetConfig(n_classes=2, **TINY)
    torch.manual_seed(0)
    model = VirtualStainModel(build_unet(config).eval(), config, Schedule(), StainScaling([0.0] * 5, [1.0] * 5),
                              ["DNA", "ER", "RNA", "AGP", "Mito"], ["a", "b"], [-4.0, 0.0, 4.0])
    path = save_model(tmp_path_factory.mktemp("vs") / "vs.safetensors", model)
    state = {k: v.contiguous() for k, v in model.unet.state_dict().items()}
    return path, model.metadata(), {f"unet.{k}": v for k, v in state.items()}


def _rewrite(tmp_path, saved, edit):
    _, meta, state = saved
    meta = json.loads(json.dumps(meta))
    header = edit(meta)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path), metadata={HEADER_KEY: header if isinstance(header, str) else json.dumps(meta)})
    return path


def test_the_saved_model_still_loads(saved):
    assert load_model(saved[0]).unet_config.widths == [8, 16]


def test_huge_declared_widths_are_refused_before_allocating(tmp_path, saved):
    def huge(meta):
        meta["unet"]["widths"] = [80_000, 80_000]  # about 160 GB of weights; was allocated, then a traceback
        meta["unet"]["groups"] = 8
    with pytest.raises(VirtualStainError, match=r"the network its metadata declares needs .* but this machine has"):
        load_model(_rewrite(tmp_path, saved, huge))


def test_a_declared_shape_that_is_not_the_files_is_refused(tmp_path, saved):
    def wider(meta):
        meta["unet"]["widths"] = [8, 32]
    with pytest.raises(VirtualStainError, match=r"the metadata declares unet\..* the file holds"):
        load_model(_rewrite(tmp_path, saved, wider))


def test_absurd_depth_and_nested_json_are_refused(tmp_path, saved):
    def deep(meta):
        meta["unet"]["widths"] = [8] * 100_000
        meta["unet"]["groups"] = 4
    with pytest.raises(VirtualStainError, match="levels"):
        load_model(_rewrite(tmp_path, saved, deep))
    with pytest.raises(VirtualStainError, match="nests its JSON more than"):
        load_model(_rewrite(tmp_path, saved, lambda meta: "[" * 50_000 + "]" * 50_000))  # was RecursionError


def test_mutated_metadata_gives_a_model_or_a_virtual_stain_error(saved, tmp_path_factory):
    """Property: any one field of the metadata replaced by random JSON (or removed) loads or is refused with
    VirtualStainError, never another exception (derandomized; 30 cases)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from property_helpers import mutated, outcome

    folder = tmp_path_factory.mktemp("mutated")

    @settings(max_examples=30, deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow])
    @given(meta=mutated(saved[1]))
    def check(meta):
        path = _rewrite(folder, saved, lambda _: json.dumps(meta))
        got = outcome(lambda: load_model(path), VirtualStainError)
        if not isinstance(got, Exception):
            assert got.unet_config.stain_channels == len(got.stain_names)

    check()
