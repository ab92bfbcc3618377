"""Small Hugging Face ``transformers`` architectures (random weights) for conformance checks.

Every entry builds in well under a second on CPU: hidden sizes 32-64, two layers, few heads,
32x32 images. ``build(name)`` returns ``(model, inputs, kind)`` with ``kind`` one of
``causal``, ``encoder``, ``seq2seq`` or ``vision``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

VOCAB = 64
SEQ = 8
IMAGE = 32

_LLM = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
_ENC = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
)


def _ids(batch: int = 1) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(1, VOCAB, (batch, SEQ))}


def _pixels(channels: int = 3, size: int = IMAGE) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(1, channels, size, size)}


def _causal(cfg_name: str, model_name: str, **kw: Any) -> Callable[[], tuple]:
    def make():
        import transformers as T

        cfg = getattr(T, cfg_name)(**kw)
        return getattr(T, model_name)(cfg), _ids(), "causal"

    return make


def _encoder(cfg_name: str, model_name: str, **kw: Any) -> Callable[[], tuple]:
    def make():
        import transformers as T

        cfg = getattr(T, cfg_name)(**kw)
        return getattr(T, model_name)(cfg), _ids(), "encoder"

    return make


def _vision(cfg_name: str, model_name: str, size: int = IMAGE, **kw: Any) -> Callable[[], tuple]:
    def make():
        import transformers as T

        cfg = getattr(T, cfg_name)(**kw)
        return getattr(T, model_name)(cfg), _pixels(size=size), "vision"

    return make


def _seq2seq(cfg_name: str, model_name: str, **kw: Any) -> Callable[[], tuple]:
    def make():
        import transformers as T

        cfg = getattr(T, cfg_name)(**kw)
        inputs = _ids()
        inputs["decoder_input_ids"] = torch.randint(1, VOCAB, (1, SEQ // 2))
        return getattr(T, model_name)(cfg), inputs, "seq2seq"

    return make


_NO_KV = {k: v for k, v in _LLM.items() if k != "num_key_value_heads"}
_CONV_STAGES = dict(num_channels=3, num_labels=3)

ZOO: dict[str, Callable[[], tuple]] = {
    "llama": _causal("LlamaConfig", "LlamaForCausalLM", **_LLM),
    "mistral": _causal("MistralConfig", "MistralForCausalLM", **_LLM),
    "qwen2": _causal("Qwen2Config", "Qwen2ForCausalLM", **_LLM),
    "qwen3": _causal("Qwen3Config", "Qwen3ForCausalLM", head_dim=8, **_LLM),
    "phi3": _causal("Phi3Config", "Phi3ForCausalLM", **_LLM),
    "gemma": _causal("GemmaConfig", "GemmaForCausalLM", head_dim=8, **_LLM),
    "gemma2": _causal("Gemma2Config", "Gemma2ForCausalLM", head_dim=8, **_LLM),
    "gpt2": _causal(
        "GPT2Config",
        "GPT2LMHeadModel",
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "gpt_neox": _causal("GPTNeoXConfig", "GPTNeoXForCausalLM", **_NO_KV),
    "opt": _causal(
        "OPTConfig",
        "OPTForCausalLM",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    ),
    "falcon": _causal(
        "FalconConfig",
        "FalconForCausalLM",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        new_decoder_architecture=True,
        num_kv_heads=2,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "stablelm": _causal("StableLmConfig", "StableLmForCausalLM", **_LLM),
    "bert": _encoder("BertConfig", "BertForSequenceClassification", num_labels=3, **_ENC),
    "roberta": _encoder(
        "RobertaConfig",
        "RobertaForSequenceClassification",
        num_labels=3,
        **{**_ENC, "pad_token_id": 1},
    ),
    "distilbert": _encoder(
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        vocab_size=VOCAB,
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=4,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    ),
    "electra": _encoder(
        "ElectraConfig",
        "ElectraForSequenceClassification",
        embedding_size=32,
        num_labels=3,
        **_ENC,
    ),
    "deberta_v2": _encoder(
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        num_labels=3,
        **_ENC,
    ),
    "t5": _seq2seq(
        "T5Config",
        "T5ForConditionalGeneration",
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    ),
    "bart": _seq2seq(
        "BartConfig",
        "BartForConditionalGeneration",
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    ),
    "resnet": _vision(
        "ResNetConfig",
        "ResNetForImageClassification",
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        **_CONV_STAGES,
    ),
    "convnext": _vision(
        "ConvNextConfig",
        "ConvNextForImageClassification",
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        **_CONV_STAGES,
    ),
    "convnextv2": _vision(
        "ConvNextV2Config",
        "ConvNextV2ForImageClassification",
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        **_CONV_STAGES,
    ),
    "mobilenet_v1": _vision(
        "MobileNetV1Config",
        "MobileNetV1ForImageClassification",
        depth_multiplier=0.25,
        image_size=IMAGE,
        **_CONV_STAGES,
    ),
    "mobilenet_v2": _vision(
        "MobileNetV2Config",
        "MobileNetV2ForImageClassification",
        depth_multiplier=0.25,
        image_size=IMAGE,
        **_CONV_STAGES,
    ),
    "efficientnet": _vision(
        "EfficientNetConfig",
        "EfficientNetForImageClassification",
        width_coefficient=0.25,
        depth_coefficient=0.25,
        image_size=IMAGE,
        hidden_dim=320,
        **_CONV_STAGES,
    ),
    "regnet": _vision(
        "RegNetConfig",
        "RegNetForImageClassification",
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        groups_width=8,
        **_CONV_STAGES,
    ),
    "vit": _vision(
        "ViTConfig",
        "ViTForImageClassification",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=8,
        **_CONV_STAGES,
    ),
    "deit": _vision(
        "DeiTConfig",
        "DeiTForImageClassification",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=8,
        **_CONV_STAGES,
    ),
    "swin": _vision(
        "SwinConfig",
        "SwinForImageClassification",
        image_size=IMAGE,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=4,
        **_CONV_STAGES,
    ),
    "dinov2": _vision(
        "Dinov2Config",
        "Dinov2ForImageClassification",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=IMAGE,
        patch_size=8,
        **_CONV_STAGES,
    ),
    "mobilevit": _vision(
        "MobileViTConfig",
        "MobileViTForImageClassification",
        image_size=IMAGE,
        hidden_sizes=[32, 40, 48],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2,
        **_CONV_STAGES,
    ),
    "segformer": _vision(
        "SegformerConfig",
        "SegformerForImageClassification",
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        **_CONV_STAGES,
    ),
}


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str]:
    """``(model in eval mode, example inputs, kind)`` for one architecture of :data:`ZOO`."""
    torch.manual_seed(seed)
    model, inputs, kind = ZOO[name]()
    return model.eval(), inputs, kind
