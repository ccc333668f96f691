"""Single-cell profiles from a model layer: extraction, sphering, UMAP."""
