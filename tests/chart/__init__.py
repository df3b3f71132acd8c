"""Helpers for tests/test_chart.py: rendering the chart, CRD schemas, the policy scan."""
