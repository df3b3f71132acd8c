"""Helpers for running the project's processes on this machine (tests, load tests, make observe)."""
