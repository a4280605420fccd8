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


def tiny_hf_model(name: str, layers: int = 2, width: int = 64, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised model of one of ``HF_ARCHITECTURES``, in eval mode."""
    import transformers as tf

    common = dict(vocab_size=128, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    decoder = dict(num_hidden_layers=layers, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4)
    configs = {
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=layers, n_embd=width, n_head=4, n_positions=128,
                                                          vocab_size=128, bos_token_id=0, eos_token_id=0)),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**decoder, num_key_value_heads=2, **common)),
        "bert": lambda: tf.BertModel(tf.BertConfig(**decoder, vocab_size=128, max_position_embeddings=128,
                                                   pad_token_id=0)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**decoder, num_key_value_heads=2, **common)),
        "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(num_hidden_layers=layers, hidden_size=width, ffn_dim=2 * width,
                                                      num_attention_heads=4, word_embed_proj_dim=width, **common)),
        "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**decoder, **common)),
    }
    if name not in configs:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(configs)}")
    torch.manual_seed(seed)
    return configs[name]().eval()


HF_ARCHITECTURES = ("gpt2", "llama", "bert", "qwen2", "opt", "gpt_neox")
