"""`python -m edge_somad.cli`: the same as the `edge-somad` entry point."""

from edge_somad.cli import main

main()
