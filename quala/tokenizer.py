"""The tokenizer, on the `tokenizers` library alone (no transformers, no torch: inference stays light).

A model directory holds a Hugging Face fast-tokenizer file (tokenizer.json) or a WordPiece vocab.txt; both load
here, and `save_pretrained` writes files that Hugging Face's AutoTokenizer reads back.
"""
from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

from quala.config import QualaError

SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class Tokenizer:
    """Question/context pairs -> overlapping windows, with character offsets (the Hugging Face fast tokenizer's
    `truncation="only_second", return_overflowing_tokens=True` behaviour, which these windows equal)."""

    def __init__(self, tokenizer, source: Path | None = None):
        self.base = tokenizer
        self.base.no_padding()
        self.base.no_truncation()
        self.source = source

    @lru_cache(maxsize=4)
    def _windowing(self, max_length: int, stride: int):
        tok = self.base.__class__.from_str(self.base.to_str())
        tok.no_padding()
        tok.enable_truncation(max_length, stride=stride, strategy="only_second")
        return tok

    def question_offsets(self, question: str) -> list[tuple[int, int]]:
        return self.base.encode(question, add_special_tokens=False).offsets

    def windows(self, pairs: list[tuple[str, str]], max_length: int, stride: int) -> list[tuple[int, object]]:
        """(pair index, encoding) for every window, in order: each pair's first window, then its overflow."""
        try:
            encodings = self._windowing(max_length, stride).encode_batch(pairs)
        except Exception as e:  # tokenizers raises for windows too small to hold the question
            raise QualaError(f"cannot split the context into windows of {max_length} tokens with stride {stride} "
                             f"({e}); the question may be too long") from None
        return [(i, w) for i, e in enumerate(encodings) for w in [e, *e.overflowing]]

    def get_vocab(self) -> dict[str, int]:
        return self.base.get_vocab()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """tokenizer.json and, when the source directory had them, its tokenizer_config.json etc."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.base.save(str(directory / "tokenizer.json"))
        for name in SIDE_FILES:
            if self.source is not None and (self.source / name).is_file() and self.source != directory:
                shutil.copyfile(self.source / name, directory / name)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A model directory's tokenizer: tokenizer.json, else a WordPiece vocab.txt (lower-cased unless
    tokenizer_config.json says do_lower_case: false)."""
    from tokenizers import BertWordPieceTokenizer, Tokenizer as Base
    path = Path(path)
    try:
        if (path / "tokenizer.json").is_file():
            return Tokenizer(Base.from_file(str(path / "tokenizer.json")), path)
        if (path / "vocab.txt").is_file():
            lower = True
            if (path / "tokenizer_config.json").is_file():
                lower = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                    "do_lower_case", True)
            wordpiece = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)
            return Tokenizer(Base.from_str(wordpiece._tokenizer.to_str()), path)
    except Exception as e:  # tokenizers raises its own exception types for damaged files
        raise QualaError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    raise QualaError(f"{path}: no tokenizer files (tokenizer.json or vocab.txt)")
