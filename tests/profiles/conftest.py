import pytest

from vae_helpers import small_crops


@pytest.fixture(scope="module")
def crops():
    """Crops of a small synthetic data set (:func:`vae_helpers.small_crops`), once per test module."""
    return small_crops()
