"""Our fused graph timed beside graphs shaped like the closest peer toolkit's default PaDiM models.

The peer (AnomaVision 3.6.2) defaults to PaDiM on ImageNet ResNet18: the stem and stage 1 (64
channels at stride 4) with a random subset of 50 channels ("light"), or stages 1-3 (64+128+256 =
448 channels, stages 2 and 3 upsampled to the stride-4 grid by nearest neighbour and concatenated)
with 100 random channels ("deep"); then a per-position Gaussian, i.e. a Mahalanobis distance with
an inverse covariance per patch position, (N, C, C), computed as (delta @ inv_cov * delta).sum(-1)
with delta laid out (N, B, C) so ONNX sees one batched MatMul. Here both are rebuilt in plain torch
(torchvision is not a dependency) and given the same pre/post steps our graph contains: uint8 BGR
NHWC in -> cast, BGR->RGB, ImageNet normalisation; bilinear upsampling to the input size, separable
Gaussian smoothing with reflect padding, image score = mean of the top share of pixels, taken from
edge_somad.scoring (the sigma and share of OUR model's config.json).

Weights and statistics are random: the graphs are right in shape, size and FLOPs, so the TIMING is
meaningful, the ACCURACY is not (there is no ImageNet ResNet18 offline). No published PaDiM-R18
bottle figures are quoted here: none was checked against a citable source offline.

All graphs are exported the way export/onnx_graph.py exports ours (TorchScript exporter, opset 17)
and run in ONE process with ONNX Runtime CPU sessions of the same intra-op thread count and
spinning disabled (a spinning session's idle threads steal the cores of the one being timed),
batch 1, round-robin (the order rotates every iteration), then p50/p99 per graph.

    python benchmarks/peer.py [--model runs/suite/bottle_somad] [--also OTHER_MODEL ...] [--iters 100] [--threads N]
                              [--json peer.json]

--also adds other exported models to the same round-robin (e.g. another head of the same part), so
their ratio to peer-deep comes from the same run as ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_somad import scoring
from edge_somad.backbones import IMAGENET_MEAN, IMAGENET_STD

# The suite's bottle model, relative to the checkout (benchmarks/suite.py writes it there).
DEFAULT_MODEL = Path("runs/suite/bottle_somad")
# (stages used, channels kept): AnomaVision's PaDiM defaults ("light") and its deeper setting.
PEERS = {"peer-light": (1, 50), "peer-deep": (3, 100)}
STAGE_CHANNELS = (64, 128, 256)
ACCURACY_NOTE = ("peer graphs carry RANDOM weights and statistics: their timing and size are meaningful, "
                 "their accuracy is not (no ImageNet ResNet18 offline); no published figure is quoted")


class BasicBlock(nn.Module):
    """ResNet18's block: two 3x3 convs with BN, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet18Stages(nn.Module):
    """ResNet18 stem + the first `stages` stages (layer1..layer3); returns every stage's output."""

    def __init__(self, stages: int) -> None:
        super().__init__()
        if not 1 <= stages <= 3:
            raise ValueError(f"stages={stages}; expected 1, 2 or 3 (layer1..layer3)")
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        cins = (64, *STAGE_CHANNELS[:-1])
        self.layers = nn.ModuleList(
            nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1))
            for i, (cin, cout) in enumerate(zip(cins[:stages], STAGE_CHANNELS[:stages], strict=True)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


class PeerPadim(nn.Module):
    """uint8 BGR (B, H, W, 3) -> (anomaly_map (B, H, W), score (B,)): the peer's PaDiM with our pre/post."""

    def __init__(self, stages: int, channels: int, height: int, width: int, sigma: float, top: float,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the conv weights' default init
        self.backbone = ResNet18Stages(stages).eval()
        total = sum(STAGE_CHANNELS[:stages])
        if not 1 <= channels <= total:
            raise ValueError(f"channels={channels}; stages 1..{stages} have {total}")
        self.grid = (height // 4, width // 4)
        self.size = (height, width)
        n = self.grid[0] * self.grid[1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("idx", torch.randperm(total, generator=g)[:channels].sort().values)
        self.register_buffer("gauss_mean", torch.randn(n, channels, generator=g) * 0.1)
        # Symmetric positive definite per position (values are irrelevant to timing; NaN-free matters).
        noise = torch.randn(n, channels, channels, generator=g) * (0.1 / channels ** 0.5)
        self.register_buffer("inv_cov", torch.eye(channels) + noise @ noise.transpose(1, 2))
        # The same post step as our graph (scoring.smoothing_operators): the peer pays what we pay.
        rows_op, cols_op = scoring.smoothing_operators(self.grid, self.size, sigma)
        self.register_buffer("rows_op", rows_op)
        self.register_buffer("cols_op", cols_op)
        self.score_pixels = scoring.image_score_pixels(height, width, top)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> (B, N, C) patch embeddings (the peer's index_select after the concat)."""
        x = frames.permute(0, 3, 1, 2).to(torch.float32)[:, [2, 1, 0]]  # BGR -> RGB, as our graph does
        feats = self.backbone((x - self.mean) * self.inv_std)
        feats = [feats[0]] + [F.interpolate(f, size=self.grid, mode="nearest") for f in feats[1:]]
        emb = torch.index_select(torch.cat(feats, 1), 1, self.idx)
        return emb.flatten(2).transpose(1, 2)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self.embed(frames) - self.gauss_mean  # (B, N, C)
        left = (delta.transpose(0, 1) @ self.inv_cov).transpose(0, 1)  # (N, B, C) @ (N, C, C): one batched MatMul
        dist = (left * delta).sum(-1).clamp_min(0).sqrt()  # (B, N)
        amap = scoring.smooth_and_upsample(dist, self.grid, self.rows_op, self.cols_op)
        return amap, scoring.image_scores(amap, self.score_pixels)


def export_peer(net: PeerPadim, path: Path) -> Path:
    """The same exporter settings as export/onnx_graph.py: TorchScript exporter, opset 17, dynamic batch."""
    h, w = net.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net, (torch.zeros(2, h, w, 3, dtype=torch.uint8),), str(path), input_names=["frames"],
            output_names=["anomaly_map", "score"],
            dynamic_axes={"frames": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
            opset_version=17, do_constant_folding=True, dynamo=False)
    return path


def open_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_round_robin(sessions: dict[str, Any], frames: np.ndarray, iters: int, warmup: int) -> dict[str, np.ndarray]:
    """Seconds per run() of each session, interleaved; the order rotates so none always runs first."""
    names = list(sessions)
    for _ in range(warmup):
        for name in names:
            sessions[name].run(None, {"frames": frames})
    times = {name: np.empty(iters) for name in names}
    for i in range(iters):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            sessions[name].run(None, {"frames": frames})
            times[name][i] = time.perf_counter() - t0
    return times


def run(model_dir: Path, iters: int, warmup: int, threads: int | None, out_dir: Path,
        also: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Export the peer graphs at our model's size, time all three, return rows + machine line."""
    import onnxruntime as ort

    from edge_somad.artifacts import CONFIG_NAME, load_config
    from edge_somad.bench.machine import RowThreads, cpu_info, machine_line
    from edge_somad.config import FitConfig
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.graph_cost import graph_cost

    manifest = load_manifest(model_dir)
    h, w = manifest.preprocessing.height, manifest.preprocessing.width
    config = load_config(model_dir) if (model_dir / CONFIG_NAME).is_file() else FitConfig()
    cpu = cpu_info()
    threads = threads or cpu.physical or cpu.usable
    paths = {"ours": model_dir / manifest.onnx}
    for name, (stages, channels) in PEERS.items():
        net = PeerPadim(stages, channels, h, w, config.smoothing_sigma, config.image_score_top).eval()
        paths[name] = export_peer(net, out_dir / f"{name}.onnx")
    for extra in also:
        paths[f"also:{extra.name}"] = extra / load_manifest(extra).onnx
    sessions = {name: open_session(p, threads) for name, p in paths.items()}
    frames = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    times = time_round_robin(sessions, frames, iters, warmup)
    rows = []
    for name, t in times.items():
        cost = graph_cost(paths[name])
        p50 = float(np.percentile(t, 50))
        rows.append({"graph": name, "file": str(paths[name]), "file_bytes": paths[name].stat().st_size,
                     "gflop_per_frame": round(cost.flops / 1e9, 3), "mb_per_frame": round(cost.bytes / 1e6, 1),
                     "p50_ms": round(p50 * 1e3, 2), "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 2),
                     "achieved_gflops": round(cost.flops / p50 / 1e9, 2)})
    ours = rows[0]
    deep = next(r for r in rows if r["graph"] == "peer-deep")
    for r in rows[1:]:
        if r["graph"] in PEERS:
            r["ours_over_peer_p50"] = round(ours["p50_ms"] / r["p50_ms"], 2)
            r["ours_over_peer_size"] = round(ours["file_bytes"] / r["file_bytes"], 2)
    for r in rows:
        if r["graph"] not in PEERS:
            r["over_peer_deep_p50"] = round(r["p50_ms"] / deep["p50_ms"], 3)
    rt = {"all graphs": RowThreads(f"onnxruntime {ort.__version__}", threads, "set, spinning off")}
    return {"machine": machine_line(cpu, rt), "model": str(model_dir), "size": [h, w], "iters": iters,
            "warmup": warmup, "threads": threads, "smoothing_sigma": config.smoothing_sigma,
            "image_score_top": config.image_score_top, "note": ACCURACY_NOTE, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = ("graph", "file MB", "GFLOP/frame", "MB/frame", "p50 ms", "p99 ms", "GFLOP/s", "ours/peer p50",
            "ours/peer size")
    cells = [(r["graph"], f"{r['file_bytes'] / 1e6:.1f}", f"{r['gflop_per_frame']:.3f}", f"{r['mb_per_frame']:.1f}",
              f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['achieved_gflops']:.1f}",
              str(r.get("ours_over_peer_p50", "-")), str(r.get("ours_over_peer_size", "-"))) for r in result["rows"]]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    lines = [result["machine"],
             f"{result['size'][0]}x{result['size'][1]}, batch 1, {result['iters']} iterations round-robin, "
             f"ours = {result['model']}"]
    lines += ["  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip() for row in [head, *cells]]
    lines += [f"{r['graph']}: p50 / peer-deep p50 = {r['over_peer_deep_p50']}" for r in result["rows"]
              if "over_peer_deep_p50" in r]
    lines.append("note: " + result["note"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model dir (manifest.json)")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another exported model dir timed in the same round-robin (repeatable)")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for every session "
                    "(default: physical cores, ORT's own default)")
    ap.add_argument("--keep", type=Path, default=None, help="write the peer .onnx files here (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        print(f"error: {args.model}/manifest.json not found; pass --model DIR, a model dir written by "
              "`edge-somad fit` + `edge-somad export`", file=sys.stderr)
        return 2
    for extra in args.also:
        if not (extra / "manifest.json").is_file():
            print(f"error: --also {extra}: no manifest.json there; pass an exported model dir", file=sys.stderr)
            return 2
    if args.iters < 1 or args.warmup < 0:
        print(f"error: iters={args.iters}, warmup={args.warmup}; expected iters >= 1, warmup >= 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edge-somad-peer-") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = run(args.model, args.iters, args.warmup, args.threads, out_dir, tuple(args.also))
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
