"""The output stage: the results table and its schema, provenance, flagged-cell export, the saved-audit folder."""
