"""Streaming runtime: cameras -> scorer -> verdicts over ZeroMQ. Imports no torch, ever.

scorers/    the Scorer protocol and its backends, and picking one for a model directory
messaging/  the verdict, its wire format, bounded decoding, publisher, subscriber, CURVE, journal, replay
health/     line health per camera: camera faults, link, drift, fail rate, compression
pipeline/   the frame path: sources, one resize, scoring in batches, verdicts, defects, the run loop
view/       `edge-somad view`: the live web page
bridges/    `edge-somad bridge mqtt|opcua`: factory integration
The commands themselves live in edge_somad/cli/.
"""
