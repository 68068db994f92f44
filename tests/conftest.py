"""Shared pytest setup: quiet TensorFlow, a seeded RNG fixture."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(1234)
