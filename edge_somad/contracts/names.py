"""Names and vocabularies shared by every step: written once here, imported everywhere else."""

from __future__ import annotations

# The fused graph's I/O (export/onnx_graph.py writes them, every scorer feeds and reads them).
INPUT_NAME = "frames"
MAP_NAME = "anomaly_map"
SCORE_NAME = "score"
OUTPUT_NAMES = (MAP_NAME, SCORE_NAME)

# The graph at three precisions: fp32 model.onnx, fp16 (TensorRT engine only), int8 model.int8.onnx.
PRECISIONS = ("fp32", "fp16", "int8")

# The one host-side resize (contracts/geometry.py); stretch distorts the aspect ratio.
RESIZE_MODES = ("letterbox", "crop", "stretch")

# Image files read as data, calibration images and camera folders. OpenCV's wheels decode all of
# them (cv2.imread / cv2.imdecode); runtime/pipeline/frames.py checks JPEG/PNG/BMP/WebP bytes for truncation.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
