"""The frame path: frame sources and their watch, one resize, scoring in batches, verdicts and
defect regions, and the run loop that ties them together."""
