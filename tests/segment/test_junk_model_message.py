"""A junk cellpose model file gets a message naming the file and what is wrong, never torch's advice to
load it with weights_only=False (that would run whatever code the file holds)."""

import collections

import pytest
import torch

from napari_gradcamo.segment.cellpose import SegmentationError, load_state_dict


class NotWeights:  # an object a weights-only load refuses
    pass


def _message(path):
    with pytest.raises(SegmentationError) as info:
        load_state_dict(path, 3, "Give a cellpose-3 model file.")
    return str(info.value)


def _clean(text):
    lowered = text.lower()
    assert "weights_only" not in lowered and "re-running" not in lowered and "will likely succeed" not in lowered


def test_random_bytes(tmp_path):
    path = tmp_path / "junk_model"
    path.write_bytes(b"not a model at all" * 100)
    text = _message(path)
    _clean(text)
    assert str(path) in text and "not a PyTorch weights file" in text and "1,800 bytes" in text


def test_empty_file(tmp_path):
    path = tmp_path / "empty_model"
    path.write_bytes(b"")
    text = _message(path)
    _clean(text)
    assert "empty" in text


def test_a_pickle_that_holds_code_is_not_loaded(tmp_path):
    path = tmp_path / "pickled_model"
    torch.save({"net": NotWeights()}, path)
    with pytest.raises(Exception, match="weights_only"):  # what torch itself says, for the record
        torch.load(path, weights_only=True)
    text = _message(path)
    _clean(text)
    assert str(path) in text and "could run that code" in text


def test_a_state_dict_loads(tmp_path):
    path = tmp_path / "ok_model"
    torch.save(collections.OrderedDict(w=torch.zeros(2)), path)
    assert set(load_state_dict(path, 3, "")) == {"w"}
