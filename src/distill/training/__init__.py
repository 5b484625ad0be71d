"""Training loops, one file per mode: `sync.py`, `asynchronous.py`, and `single.py` (one model
alone, optionally with soft labels: the baseline, offline mode and both phases of async)."""
