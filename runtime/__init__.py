"""Streaming runtime: cameras -> scorer -> verdicts over ZeroMQ. Imports no torch, ever."""
