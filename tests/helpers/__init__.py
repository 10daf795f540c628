"""Shared test helpers (not tests): real components, probes, polling."""
