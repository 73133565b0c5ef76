"""Fixtures shared by test modules."""

import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh data cache (P2PFL_CACHE) per module, so tests never read or fill the user's."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("cache")
        mp.setenv("P2PFL_CACHE", str(d))
        yield d
