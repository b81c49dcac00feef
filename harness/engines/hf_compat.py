"""transformers version shims for the built-in engines: one small helper per API that moved
between the releases users are on (4.44 to 5.x), each naming the release that moved it.
Versions come from package metadata (harness/engines/versions.py); nothing here imports transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.engines.versions import at_least


def dtype_argument(dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained's dtype keyword: `dtype=` since transformers 4.56 (which renamed it),
    `torch_dtype=` before; 4.55 and older pass an unknown `dtype` on to the model's __init__
    ("LlamaForCausalLM.__init__() got an unexpected keyword argument 'dtype'")."""
    return {"dtype": dtype} if at_least("transformers", "4.56") else {"torch_dtype": dtype}


def sequence_bias_argument(bias: dict[int, float]) -> Any:
    """generate()'s `sequence_bias` for single-token biases: the list form `[[ids], bias]`
    since transformers 4.45 (a GenerationConfig must serialise to JSON); 4.44 takes only the
    dict `{tuple(ids): bias}` ("`sequence_bias` has to be a non-empty dictionary")."""
    if at_least("transformers", "4.45"):
        return [[[token], value] for token, value in bias.items()]
    return {(token,): value for token, value in bias.items()}
