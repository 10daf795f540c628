"""The TensorRT runner's CUDA half on a GPU without TensorRT: cuda-python buffers, copies and a stream.

Allocates pinned host and device memory the way runtime/scorers/trt_scorer.py does, copies a slice to the GPU
and back on one stream, and checks the bytes and an allocation error's message. Needs cuda-python
and a GPU, not TensorRT:  python benchmarks/cuda_check.py
"""

from __future__ import annotations

import ctypes

import numpy as np

from edge_somad.errors import EdgeSomadError
from edge_somad.runtime.scorers.trt_env import cuda_call, gpu_info, import_cudart


def main() -> int:
    cudart = import_cudart()
    print("GPU", *gpu_info())
    n = 4096 * 4
    pinned = [int(cuda_call(cudart, cudart.cudaMallocHost(n), "cudaMallocHost")) for _ in range(2)]
    src, dst = (np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_uint8)), (n,)).view(np.float32)
                for p in pinned)
    src[:] = np.arange(src.size, dtype=np.float32)
    dst[:] = -1
    dev = int(cuda_call(cudart, cudart.cudaMalloc(n), "cudaMalloc"))
    stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    cuda_call(cudart, cudart.cudaMemcpyAsync(dev, src[:100].ctypes.data, 400, h2d, stream), "cudaMemcpyAsync h2d")
    cuda_call(cudart, cudart.cudaMemcpyAsync(dst[:100].ctypes.data, dev, 400, d2h, stream), "cudaMemcpyAsync d2h")
    cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    ok = bool((dst[:100] == src[:100]).all() and (dst[100:] == -1).all())
    print("round trip of a batch slice:", "ok" if ok else "WRONG")
    try:
        cuda_call(cudart, cudart.cudaMalloc(1 << 50), "cudaMalloc of 1 PiB")
        print("allocation error: NOT raised")
        ok = False
    except EdgeSomadError as exc:
        print("allocation error:", exc)
    cudart.cudaFree(dev)
    for p in pinned:
        cudart.cudaFreeHost(p)
    cudart.cudaStreamDestroy(stream)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
