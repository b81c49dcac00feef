"""The tiny transformers llama the simulator's tests run (random weights, seed 1234)."""

from __future__ import annotations

import torch


def tiny_llama():
    import transformers

    torch.manual_seed(1234)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = 2
    return model
