"""Cell segmentation: the cellpose adapter and the offline generalist weights."""
