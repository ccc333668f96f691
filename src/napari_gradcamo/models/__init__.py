"""Checkpoint format and the architectures it can build."""
