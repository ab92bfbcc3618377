"""Tiny random-initialised Hugging Face models, saved to a local directory and loaded back."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 96
HIDDEN = 32


def tiny_config(family: str):
    import transformers as T

    common = {"vocab_size": VOCAB, "max_position_embeddings": 64}
    if family == "gpt2":
        return T.GPT2Config(
            n_embd=HIDDEN,
            n_layer=2,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "opt":
        return T.OPTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=HIDDEN,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            **common,
        )
    if family == "llama":
        return T.LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    if family == "bert":
        return T.BertConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            pad_token_id=0,
            **common,
        )
    raise ValueError(family)


def save_tiny(family: str, directory: Path, seed: int = 0) -> Path:
    import transformers as T

    torch.manual_seed(seed)
    config = tiny_config(family)
    cls = T.BertForMaskedLM if family == "bert" else T.AutoModelForCausalLM
    model = cls.from_config(config) if family != "bert" else cls(config)
    model.save_pretrained(directory)
    return directory


def load_tiny(directory: Path):
    from prunekit.llm.io import load_model

    model, _ = load_model(directory)
    return model


def tokens(n: int = 8, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (n, seqlen), generator=generator)
