"""Shared test fixtures: paths to the real datasets beside the repo, and torch threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BCCD = SHARED / "datasets" / "bccd" / "BCCD"
CHESS = SHARED / "datasets" / "chess"
FIXTURES = SHARED / "fixtures"

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _header_cache_in_tmp(tmp_path_factory):
    """Image header facts cached by the load-time check go to a folder of this session, not to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DETLAB_CACHE_DIR", str(tmp_path_factory.mktemp("detlab_cache")))
    yield
    mp.undo()


@pytest.fixture
def bccd() -> Path:
    if not BCCD.is_dir():
        pytest.skip(f"real dataset not found at {BCCD} (../shared/datasets/bccd)")
    return BCCD


@pytest.fixture
def chess() -> Path:
    if not CHESS.is_dir():
        pytest.skip(f"real dataset not found at {CHESS} (../shared/datasets/chess)")
    return CHESS


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"fixtures not found at {FIXTURES} (../shared/fixtures)")
    return FIXTURES
