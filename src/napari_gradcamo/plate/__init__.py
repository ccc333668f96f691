"""Whole plates: fields from a manifest, a folder or an OME-Zarr HCS plate, audited on dask.distributed,
one result file per field (resumable), a plate table (Parquet + AnnData) and an HTML report."""
