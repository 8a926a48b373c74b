"""Counts the reliability suites report at the end of a test session (scenarios, runs, points, examples)."""

from __future__ import annotations

SUMMARY: dict[str, str] = {}
