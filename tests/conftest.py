"""The tiny models of harness/tiny.py as fixtures, shared by every test module.

Each fixture is function-scoped and seeded (torch.manual_seed(0)), so a test may mutate its model
freely and every call returns the same weights. Models come back in eval mode (dropout off).
Shapes: hidden 32, 2 layers, 4 heads, vocab 99 — small enough that a forward pass takes ~1 ms.

Markers (pyproject.toml): `slow` tests run the real CLI or a bench script in subprocesses
(`-m "not slow"` leaves them out); `cuda` tests need a GPU and are skipped where torch sees none.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from harness.tiny import save_tiny, tiny_bert as _bert, tiny_gpt2 as _gpt2, tiny_llama as _llama

# Under pytest-xdist (`-n auto`, the README's test command) each worker gets its share of the cores:
# torch's default (every core per process) would oversubscribe them and slow every worker down.
# The CLI's subprocesses get one thread from tests/helpers.cli_env.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    """Skip every test marked `cuda` where there is no GPU, saying so (not a silent pass)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_bert():
    """BERT for 2-way sequence classification: nn.Linear query/key/value/dense, `classifier` head."""
    return _bert()


@pytest.fixture
def tiny_gpt2():
    """GPT-2 LM: transformers Conv1D (weight stored (in, out)) for c_attn / c_proj / c_fc."""
    return _gpt2()


@pytest.fixture
def tiny_llama():
    """Llama causal LM with grouped-query attention (k/v_proj 32 -> 16) and an untied lm_head."""
    return _llama()


# On disk, for the real CLI (`model.name_or_path=<dir>`): saved once per session with the packaged
# MiniLM tokenizer, so the tasks' real text tokenizes as it does for the default model.
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT saved with the packaged MiniLM tokenizer (vocab 30522)."""
    return save_tiny("bert", tmp_path_factory.mktemp("tiny_bert"), max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A randomly initialised 2-layer Llama causal LM, saved with the MiniLM tokenizer (any tokenizer works)."""
    return save_tiny("llama", tmp_path_factory.mktemp("tiny_llama"), intermediate_size=64,
                     max_position_embeddings=256)
