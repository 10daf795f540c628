"""Screenshot of `edge-somad view` on a real model, for the README (docs/view.png).

    PYTHONPATH=. python scripts/view_screenshot.py --model models/hazelnut_toy --video models/hazelnut_toy/line.avi

(`edge-somad demo` makes both.) Two cameras play the video: `line1` as recorded, `line2` at 55 %
brightness (light ageing: input-drift alarm). Needs chromium + chromedriver, like tests/test_view.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.view.view import BackgroundView, ViewConfig
from tests.helpers.runtime import free_port, write_video
from tests.test_view import _chrome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/view.png"))
    args = ap.parse_args()
    cap, frames = cv2.VideoCapture(str(args.video)), []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    dim = write_video(args.out.with_suffix(".dim.avi"), [(f * 0.55).astype(np.uint8) for f in frames])
    manifest = load_manifest(args.model)
    pre = manifest.preprocessing
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    browser = _chrome()
    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0)) as view:
            browser.get(view.url)
            with Publisher(endpoint) as pub:
                pub.wait_for_subscribers(1, 10.0)
                cameras = parse_cameras([f"line1={args.video}", f"line2={dim}"])
                scorer = OrtScorer(args.model / manifest.onnx, pre.height, pre.width)
                Pipeline(scorer, manifest, cameras, pub, PipelineConfig(overlay=True)).run()
            time.sleep(2.0)
            browser.save_screenshot(str(args.out))
    finally:
        browser.quit()
        dim.unlink(missing_ok=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
