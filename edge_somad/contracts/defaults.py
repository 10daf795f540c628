"""The defaults every command, library function and documentation page share, named once.

A default repeated as a literal drifts: the CLI option, the library function and the demo must
agree on where verdicts are published and what false-reject rate a fresh model is calibrated at.
"""

from __future__ import annotations

# Where `run` binds its ZeroMQ PUB socket and where `subscribe`, `view` and the bridges connect:
# loopback, so a model never serves the network unless told to (tcp://*:5556).
ENDPOINT = "tcp://127.0.0.1:5556"
# Verdict topics are <prefix>/<camera-id>.
TOPIC_PREFIX = "somad"
# The false-reject rate a threshold is set for: 0.5 % of good parts rejected.
TARGET_FRR = 0.005
# The per-pixel threshold (defect regions) is this quantile of held-out good maps' pixels.
PIXEL_QUANTILE = 0.999
# Largest batch a TensorRT engine is built for (cameras scored together).
MAX_BATCH = 4
# TensorRT builder workspace, GiB.
WORKSPACE_GB = 2.0
# The precision `export` builds a TensorRT engine in when a GPU is there.
ENGINE_PRECISION = "fp16"
