"""What does OPC 40100 cost the OPC UA bridge at start? asyncua server init, the MachineVision NodeSet
import, and the first camera's VisionSystem (plus its alarm condition the first time a check fires).

Each repeat builds a fresh asyncua Server in this process exactly as `edge-somad bridge opcua` does
(runtime/bridges/opcua.py, opcua_vision.py, opcua_alarms.py); no network traffic is involved.
Prints the median and the range over the repeats.
    python benchmarks/opcua_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


async def once() -> dict[str, float]:
    from asyncua import Server, ua

    from edge_somad.runtime.bridges.opcua_vision import VisionSystems, import_machine_vision

    out: dict[str, float] = {}
    t = time.perf_counter()
    server = Server()
    await server.init()
    out["server init"] = time.perf_counter() - t
    mv, out["MachineVision NodeSet import"] = await import_machine_vision(server)
    idx = await server.register_namespace("urn:edge-somad:bridge")

    def node_id(*parts: str) -> ua.NodeId:
        return ua.NodeId(".".join(("box", *parts)), idx)

    camera = await server.nodes.objects.add_object(node_id("cam0"), ua.QualifiedName("cam0", idx))
    t = time.perf_counter()
    await VisionSystems(server, idx, mv, node_id).camera("cam0", camera)
    out["VisionSystem for one camera"] = time.perf_counter() - t
    t = time.perf_counter()
    await camera.add_object(node_id("cam0", "Alarms", "black"), ua.QualifiedName("black", idx),
                            objecttype=ua.NodeId(ua.ObjectIds.OffNormalAlarmType))
    out["one alarm condition"] = time.perf_counter() - t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = [asyncio.run(once()) for _ in range(args.repeats)]
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"{name:32s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
