"""The harness's core: what a run is, the training loop, records."""
