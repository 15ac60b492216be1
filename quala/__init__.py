"""quala: a quantized, length-adaptive MiniLM for fast extractive question answering on CPUs.

    import quala
    qa = quala.load()                      # the released model shipped with quala, or quala.load("my/model")
    qa("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare.", budget="balanced")
"""
import os

# Nothing here loads from a hub; without this, a mistyped path makes transformers retry the network for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.2.0"
__all__ = ["load", "QuestionAnswerer", "QualaError", "__version__"]


def __getattr__(name: str):
    """quala.load / quala.QuestionAnswerer / quala.QualaError, imported on first use (the package stays quick to
    import for commands that need none of them)."""
    if name in ("load", "QuestionAnswerer"):
        from quala import pipeline
        return getattr(pipeline, name)
    if name == "QualaError":
        from quala.config import QualaError
        return QualaError
    raise AttributeError(f"module 'quala' has no attribute {name!r}")
