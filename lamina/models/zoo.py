"""A zoo of tiny transformers models, one per family, with example inputs (random weights, no downloads).

Used by the model-coverage test and ``benchmarks/model_coverage.py``: each family is compiled through
``lamina.compile`` and ``torch.compile(backend="lamina")`` and must match eager or be refused
with a clear error listing its ops.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VOCAB = 128


@dataclass(frozen=True)
class ZooModel:
    """A family's representative: how to build it and what to call it with."""

    name: str
    family: str  # encoder, decoder, encoder-decoder, cnn, vit, moe, ssm
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[tuple, dict]]


def _ids(batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, seq))


def _text(**extra: Any) -> Callable[[], tuple[tuple, dict]]:
    return lambda: ((_ids(),), dict(extra))


def _seq2seq(**extra: Any) -> Callable[[], tuple[tuple, dict]]:
    return lambda: ((_ids(),), {"decoder_input_ids": _ids(seq=5), **extra})


def _image(size: int = 32, channels: int = 3) -> Callable[[], tuple[tuple, dict]]:
    return lambda: ((torch.randn(2, channels, size, size),), {})


def _tf(config: str, model: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers as tf

        return _no_zero_weights(getattr(tf, model)(getattr(tf, config)(**kwargs)).eval())

    return build


def _no_zero_weights(model: nn.Module) -> nn.Module:
    """Give weights transformers initialises to zero (biases, some classifier heads) small random values,
    so every output depends on the whole network and a comparison with eager means something."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.normal_(0.0, 0.05)
    return model


_LM = dict(vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DEC = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, **_LM)
_CNN = dict(num_channels=3, num_labels=10)

ZOO: tuple[ZooModel, ...] = (
    # encoders
    ZooModel("bert", "encoder", _tf("BertConfig", "BertModel", **_DEC), _text()),
    ZooModel("distilbert", "encoder", _tf("DistilBertConfig", "DistilBertModel", n_layers=2, dim=64, n_heads=4,
                                          hidden_dim=128, vocab_size=VOCAB, max_position_embeddings=64), _text()),
    ZooModel("roberta", "encoder", _tf("RobertaConfig", "RobertaModel", **{**_DEC, "max_position_embeddings": 80}),
             _text()),
    ZooModel("albert", "encoder", _tf("AlbertConfig", "AlbertModel", embedding_size=32, **_DEC), _text()),
    ZooModel("deberta_v2", "encoder", _tf("DebertaV2Config", "DebertaV2Model", **_DEC), _text()),
    # decoders
    ZooModel("gpt2", "decoder", _tf("GPT2Config", "GPT2LMHeadModel", n_layer=2, n_embd=64, n_head=4,
                                    vocab_size=VOCAB, n_positions=64), _text(use_cache=False)),
    ZooModel("llama", "decoder", _tf("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2, **_DEC),
             _text(use_cache=False)),
    ZooModel("qwen2", "decoder", _tf("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2, **_DEC),
             _text(use_cache=False)),
    ZooModel("mistral", "decoder", _tf("MistralConfig", "MistralForCausalLM", num_key_value_heads=2,
                                       sliding_window=8, **_DEC), _text(use_cache=False)),
    ZooModel("opt", "decoder", _tf("OPTConfig", "OPTForCausalLM", num_hidden_layers=2, hidden_size=64, ffn_dim=128,
                                   num_attention_heads=4, word_embed_proj_dim=64, **_LM), _text(use_cache=False)),
    ZooModel("gpt_neox", "decoder", _tf("GPTNeoXConfig", "GPTNeoXForCausalLM", **_DEC), _text(use_cache=False)),
    ZooModel("falcon", "decoder", _tf("FalconConfig", "FalconForCausalLM", num_hidden_layers=2, hidden_size=64,
                                      num_attention_heads=4, vocab_size=512), _text(use_cache=False)),
    ZooModel("bloom", "decoder", _tf("BloomConfig", "BloomForCausalLM", n_layer=2, hidden_size=64, n_head=4,
                                     vocab_size=VOCAB), _text(use_cache=False)),
    ZooModel("phi", "decoder", _tf("PhiConfig", "PhiForCausalLM", **_DEC), _text(use_cache=False)),
    ZooModel("gemma", "decoder", _tf("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1, head_dim=16, **_DEC),
             _text(use_cache=False)),
    # encoder-decoders
    ZooModel("bart", "encoder-decoder", _tf("BartConfig", "BartForConditionalGeneration", encoder_layers=2,
                                            decoder_layers=2, d_model=64, encoder_attention_heads=4,
                                            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                            vocab_size=VOCAB, max_position_embeddings=64), _seq2seq(use_cache=False)),
    ZooModel("t5", "encoder-decoder", _tf("T5Config", "T5ForConditionalGeneration", num_layers=2, num_decoder_layers=2,
                                          d_model=64, d_kv=16, num_heads=4, d_ff=128, vocab_size=VOCAB),
             _seq2seq(use_cache=False)),
    ZooModel("whisper", "encoder-decoder", _tf("WhisperConfig", "WhisperForConditionalGeneration", encoder_layers=2,
                                               decoder_layers=2, d_model=64, encoder_attention_heads=4,
                                               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                               vocab_size=VOCAB, num_mel_bins=16, max_source_positions=16,
                                               max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
                                               bos_token_id=1, eos_token_id=2),
             lambda: ((torch.randn(2, 16, 32),), {"decoder_input_ids": _ids(seq=5), "use_cache": False})),
    # convnets
    ZooModel("resnet", "cnn", _tf("ResNetConfig", "ResNetForImageClassification", embedding_size=16,
                                  hidden_sizes=[16, 32], depths=[1, 1], **_CNN), _image()),
    ZooModel("convnext", "cnn", _tf("ConvNextConfig", "ConvNextForImageClassification", hidden_sizes=[16, 32],
                                    depths=[1, 1], num_stages=2, **_CNN), _image()),
    ZooModel("convnextv2", "cnn", _tf("ConvNextV2Config", "ConvNextV2ForImageClassification", hidden_sizes=[16, 32],
                                      depths=[1, 1], num_stages=2, **_CNN), _image()),
    ZooModel("mobilenet_v2", "cnn", _tf("MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.25,
                                        image_size=32, **_CNN), _image()),
    ZooModel("efficientnet", "cnn", _tf("EfficientNetConfig", "EfficientNetForImageClassification", width_coefficient=0.25,
                                        depth_coefficient=0.25, image_size=32, hidden_dim=320, **_CNN), _image()),
    ZooModel("regnet", "cnn", _tf("RegNetConfig", "RegNetForImageClassification", embedding_size=16,
                                  hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, **_CNN), _image()),
    # vision transformers
    ZooModel("vit", "vit", _tf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8,
                               num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_labels=10), _image()),
    ZooModel("swin", "vit", _tf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16,
                                depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10), _image()),
    # mixture of experts, state-space
    ZooModel("mixtral", "moe", _tf("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2, num_local_experts=4,
                                   num_experts_per_tok=2, **_DEC), _text(use_cache=False)),
    ZooModel("mixtral_batched_mm", "moe", _tf("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2,
                                              num_local_experts=4, num_experts_per_tok=2,
                                              experts_implementation="batched_mm", **_DEC), _text(use_cache=False)),
    ZooModel("mamba", "ssm", _tf("MambaConfig", "MambaForCausalLM", num_hidden_layers=2, hidden_size=32,
                                 state_size=8, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 use_mambapy=True), _text(use_cache=False)),
)


def zoo_model(name: str) -> ZooModel:
    for m in ZOO:
        if m.name == name:
            return m
    raise KeyError(f"no zoo model {name!r}; known: {', '.join(m.name for m in ZOO)}")
