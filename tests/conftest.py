"""On CI the `test` extra must be installed whole: a missing package fails the run, instead of
quietly skipping the tests that need it (the README's test command installs them all)."""

from __future__ import annotations

import importlib.util
import os

import pytest

TEST_EXTRA = ("hypothesis", "bitarray", "safetensors", "scipy", "torch", "transformers")  # pyproject.toml's `test` extra


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI"):
        missing = [name for name in TEST_EXTRA if importlib.util.find_spec(name) is None]
        if missing:
            raise pytest.UsageError(f"CI: the test extra is incomplete, {', '.join(missing)} missing: "
                                    "pip install '.[test]'")
