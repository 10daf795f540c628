"""Benchmarks of one model directory: scorer latency and throughput, the streaming pipeline's cost,
and the machine they ran on (`edge-somad bench`; the scripts in benchmarks/ build on these)."""
