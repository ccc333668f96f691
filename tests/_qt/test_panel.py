"""The status line shared by the docks (``_qt/panel.py``)."""

from napari_gradcamo._qt.panel import first_line


def test_first_line_drops_ansi_codes_and_long_dumps():
    error = RuntimeError("\x1b[31mWeights only load failed\x1b[0m\n" + "x" * 1500)
    text = first_line(error)
    assert text == "Weights only load failed" and "\x1b" not in text
