"""Soft assertions for scenario outputs of external driver programs (JDBC, node-postgres)."""

from __future__ import annotations

import pytest


class SoftChecks:
    """Every failed check of a test is reported, not only the first: a driver problem usually
    shows in several places, and which ones tells what it is."""

    def __init__(self, out: dict[str, dict]):
        self.out = out
        self.failed: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.failed:
            pytest.fail(
                f"{len(self.failed)} check(s) failed:\n- " + "\n- ".join(self.failed), pytrace=False
            )

    def true(self, cond, what: str) -> bool:
        if not cond:
            self.failed.append(what)
        return bool(cond)

    def equal(self, actual, expected, what: str) -> bool:
        return self.true(actual == expected, f"{what}: got {actual!r}, expected {expected!r}")
