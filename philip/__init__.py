"""PHiLIP core package: shared runtime, models and tools used by every service."""

import os

# Weights come from local folders only; there is no hub where PHiLIP runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers warns about optional image processors PHiLIP never uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
