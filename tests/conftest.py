"""Pytest fixtures; shared helpers are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import data_root


@pytest.fixture
def real_data() -> Path:
    """Path of the real data sets; CI sets PRETEXT_REQUIRE_DATA=1 so that a missing folder fails."""
    root = data_root()
    if root is None:
        if os.environ.get("PRETEXT_REQUIRE_DATA") == "1":
            pytest.fail("PRETEXT_REQUIRE_DATA=1 but no data folder: set PRETEXT_DATA to shared/data")
        pytest.skip("no real data folder (set PRETEXT_DATA)")
    return root
