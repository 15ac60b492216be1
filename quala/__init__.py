"""quala: a quantized, length-adaptive MiniLM for fast extractive question answering on CPUs."""
import os

# Nothing here loads from a hub; without this, a mistyped path makes transformers retry the network for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
