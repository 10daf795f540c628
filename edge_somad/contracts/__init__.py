"""The ground floor: contracts every other module builds on, importing nothing above them.

jsonio    atomic JSON write and checked read of the model directory's files
names     graph I/O tensor names, precisions, resize modes, image file suffixes
layout    the model directory: file names, split.json / fit_info.json readers
manifest  manifest.json (Manifest), the contract between export, calibration and the runtime
geometry  the one host-side resize of a frame to the model input (shared by fit, evaluate and run)
engines   what a TensorRT engine was built for, the compatibility check, the rebuild command
decision  the pass/fail rule `fails(score, threshold)`
exits     the CLI's exit codes (its error handler is edge_somad/cli/options.py)

Nothing heavy at package level: import the module you need.
"""
