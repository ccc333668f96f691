"""Cell segmentation: the cellpose adapter (``cellpose``; backends ``cellpose3`` / ``cellpose4`` chosen by the
installed cellpose) and the offline generalist cellpose-3 weights (``weights``)."""
