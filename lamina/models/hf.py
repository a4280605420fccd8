"""Tiny HuggingFace transformers models built from configs (random weights, no downloads)."""
from __future__ import annotations

import torch
from torch import nn


def make_hf_gpt2(batch: int = 2, seq: int = 16, layers: int = 2, seed: int = 0) -> tuple[nn.Module, tuple, dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=64, n_head=4, vocab_size=128, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return model, (torch.randint(0, 128, (batch, seq)),), {"use_cache": False}


def make_hf_llama(batch: int = 2, seq: int = 16, layers: int = 2, seed: int = 0) -> tuple[nn.Module, tuple, dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=128, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    return model, (torch.randint(0, 128, (batch, seq)),), {"use_cache": False}
