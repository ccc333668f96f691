"""What a damaged cellpose 4 model file is told (issue 26): the message names the missing and misshapen
parameters. The message is built without cellpose 4 (runs in the main environment); the end-to-end check with a
real cpsam file is in test_cellpose4.py (cellpose 4 venv)."""

import pytest
import torch

from napari_gradcamo.segment.cellpose4 import (
    LISTED,
    mismatch_message,
    model_family,
    shapes_from_load_error,
)


class _Tiny(torch.nn.Module):
    """Parameter names like cpsam's: an encoder, an output layer and W2."""

    def __init__(self, width=4):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.Conv2d(width, width, 1))
        self.out = torch.nn.Conv2d(width, 3, 1)
        self.W2 = torch.nn.Parameter(torch.eye(width))


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_a_file_with_one_parameter_removed_is_still_a_cellpose4_file_and_the_parameter_is_named():
    state = _Tiny().state_dict()
    for removed in list(state):
        damaged = {k: v for k, v in state.items() if k != removed}
        assert model_family(list(damaged)) == "cellpose4", removed  # the old check refused a file without W2
        message = mismatch_message("cpsam_ft.pt", _shapes(damaged), _shapes(state))
        assert f"1 missing parameter ({removed} {tuple(state[removed].shape)})" in message
        assert "misshapen" not in message and "cellpose 3" not in message
    assert mismatch_message("ok.pt", _shapes(state), _shapes(state)) is None


def test_misshapen_parameters_are_named_with_both_shapes_from_torchs_own_error():
    file_state = _Tiny(width=6).state_dict()
    network = _Tiny(width=4)
    with pytest.raises(RuntimeError) as caught:
        network.load_state_dict(file_state, strict=False)
    found, expected = shapes_from_load_error(" ".join(str(caught.value).split()))
    assert found == {k: tuple(v.shape) for k, v in file_state.items() if v.shape != network.state_dict()[k].shape}
    message = mismatch_message("wide.pt", found, expected)
    assert f"{len(found)} misshapen parameters (" in message and len(found) == 6 and "W2: (6, 6) in the file, (4, 4) expected" in message


def test_long_lists_are_cut_with_a_count_and_other_networks_are_told_apart():
    expected = {f"encoder.blocks.{i}.w": (2,) for i in range(LISTED + 5)}
    message = mismatch_message("m.pt", {"encoder.other": (1,)}, expected)
    assert f"{LISTED + 5} missing parameters" in message and "and 5 more" in message
    assert "1 parameter the network does not have (encoder.other)" in message
    assert model_family(["downsample.down.res_down_0.conv.conv_0.0.weight", "diam_mean"]) == "cellpose3"
    assert model_family(["fc.weight"]) is None
