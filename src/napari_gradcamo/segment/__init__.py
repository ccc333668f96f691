"""Cell segmentation: the cellpose adapter (``cellpose``; backends ``cellpose3`` / ``cellpose4`` chosen by the
installed cellpose) and the offline generalist cellpose-3 weights (``weights``)."""

import sys
import types


class _CallableModule(types.ModuleType):
    """``napari_gradcamo.segment`` is both this subpackage and the public function
    :func:`napari_gradcamo.segment.cellpose.segment`: once the subpackage is imported, Python makes the package
    attribute this module, so calling it runs the function (``napari_gradcamo.segment(image, settings)`` works
    whatever was imported first)."""

    def __call__(self, *args, **kwargs):
        from napari_gradcamo.segment.cellpose import segment

        return segment(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
