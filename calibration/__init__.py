"""Calibration: pass/fail thresholds from held-out good images, and INT8 quantization.

Nothing heavy at package level: `edge_somad.calibration.calibrate` is imported by the CLI.
"""
