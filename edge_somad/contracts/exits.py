"""The CLI's exit codes (README, "Exit codes"); the one error handler is edge_somad/cli/options.py.

0  done.
1  done, but the outcome asked for was not reached (`subscribe --count N` got fewer verdicts, the
   demo's verdicts disagree with the ground truth).
2  not done: an error with a message "what arrived, what was expected, how to fix" (every
   EdgeSomadError, e.g. a missing artifact, a bad option value, no GPU/TensorRT for build-engine or
   --backend tensorrt), or a command line the CLI could not parse ("Usage: ..." and "No such option").
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_MET = 1
EXIT_ERROR = 2
