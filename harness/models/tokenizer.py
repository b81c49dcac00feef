"""The tokenizer every generated model uses, without torch: a byte-level BPE (vocab 512)
trained on the corpus shipped with the harness, deterministic, in under a second.

The model factory writes it into each model directory; the scenario format counts a
prompt's tokens with it when the cheap bound (one token per UTF-8 byte) is not enough.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.models.model_dims import VOCAB_SIZE

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"


@lru_cache(maxsize=4)
def trained_tokenizer_json(vocab_size: int = VOCAB_SIZE, every_other_line: bool = False) -> str:
    """A byte-level BPE (vocab 512) trained on the corpus shipped with the harness (<1 s).
    A different `vocab_size` and `every_other_line` (trained on lines 1, 3, 5, ...: other
    merges, so the same text gets other ids) make a second, different tokenizer, as an
    assistant model with its own tokenizer has (universal assisted decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.read_text().splitlines()
    tokenizer.train_from_iterator(lines[1::2] if every_other_line else lines, trainer)
    return tokenizer.to_str()


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(trained_tokenizer_json())


def count_tokens(text: str) -> int:
    """Tokens of `text` as the runner encodes a prompt (no special tokens added)."""
    return len(_tokenizer().encode(text).ids)
