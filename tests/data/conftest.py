"""Fixtures of the data tests: the MiniLM tokenizer (plain and with a chat template), one token cache
and the Rotten Tomatoes task most batching tests read. Session-scoped: building them is the slow part,
and the token cache is keyed by everything that changes its content."""

import copy

import pytest

from harness.data import build_task
from tests.data.helpers import MINILM, preset

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="session")
def rotten(tokenizer, cache):
    """96 / 32 / 32 Rotten Tomatoes reviews, built with seed 3 (the default of train_loader)."""
    return build_task(preset("rotten_tomatoes", limit_train=96, limit_eval=32, cache_dir=cache), tokenizer, seed=3)
