"""The forgetting probe's perplexity (harness/forgetting.py) against the model's own loss, and its record entry."""

import contextlib
import math

import pytest
import torch

from harness.data import ForgetConfig, general_chunks
from harness.forgetting import ForgetProbe, probe_perplexity
from harness.tiny import MINILM_VOCAB, tiny_llama
from tests.data.helpers import MINILM
from tests.helpers import hf_perplexity

# The test share cut at 48 tokens by MiniLM's WordPiece: full chunks and the short tails of documents.
CFG = ForgetConfig(files=["hamlet", "convention_2016"], max_length=48)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def chunks(tokenizer, tmp_path_factory):
    every = general_chunks(CFG, tokenizer, "fp", tmp_path_factory.mktemp("cache"))
    lengths = every["length"]
    short = sorted(range(len(every)), key=lambda i: lengths[i])[:4]  # tails: padding within a batch
    return every.select(sorted(set(range(8)) | set(short)))


def model():
    return tiny_llama(vocab_size=MINILM_VOCAB, max_position_embeddings=64, num_key_value_heads=4)


def test_perplexity_is_token_weighted_over_all_chunks_as_the_models_own_loss(chunks):
    assert len(set(chunks["length"])) > 2  # full chunks and shorter tails
    m = model()
    scores = probe_perplexity(m, chunks, batch_size=3, device="cpu")  # batches of mixed lengths, padded
    weighted, mean_of_chunks = hf_perplexity(m, chunks)
    assert scores["perplexity"] == pytest.approx(weighted, rel=1e-5)
    assert scores["nll"] == pytest.approx(math.log(weighted), rel=1e-6)
    assert scores["tokens"] == sum(n - 1 for n in chunks["length"])
    assert scores["perplexity"] != pytest.approx(mean_of_chunks, rel=1e-3)  # the definition matters here
    assert scores["perplexity"] == pytest.approx(30_759.64, rel=1e-5)  # a random 2-layer Llama: about the vocab size
    # another batch size, the same numbers up to float32 rounding of the NLL (1e-6 on the
    # perplexity failed by 1.1e-6 on an AMD EPYC: exp() turns the NLL's rounding into relative error)
    assert probe_perplexity(m, chunks, batch_size=16, device="cpu") == pytest.approx(scores, rel=1e-5)


def test_the_probe_leaves_the_model_in_its_mode(chunks):
    m = model().train()
    probe_perplexity(m, chunks.select(range(2)), batch_size=2, device="cpu")
    assert m.training


def test_report_holds_before_final_and_best_with_the_increase(tokenizer, chunks, tmp_path):
    probe = ForgetProbe(ForgetConfig(files=CFG.files, max_length=48, limit=6), tokenizer, "cpu", cache_dir=tmp_path)
    m = model()
    before = probe.score(m)
    kept = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # "training"

    @contextlib.contextmanager
    def best_weights(model):  # the pretrained weights stand in for the best validation weights
        own = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(kept[n])
        yield model
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(own[n])

    entry = probe.report(m, before, best_weights, best_step=4, final_step=10)
    final = probe_perplexity(m, probe.chunks, 8, "cpu")
    assert entry["before"] == {"nll": before["nll"], "perplexity": before["perplexity"]}
    assert entry["final"]["perplexity"] == pytest.approx(final["perplexity"]) != pytest.approx(before["perplexity"])
    assert entry["final"]["perplexity_increase"] == pytest.approx(final["perplexity"] - before["perplexity"])
    assert entry["best"]["perplexity"] == pytest.approx(before["perplexity"], rel=1e-6)
    assert entry["best"]["perplexity_increase"] == pytest.approx(0.0, abs=1e-6 * before["perplexity"])
    assert (entry["best_step"], entry["tokens"], entry["chunks"]) == (4, before["tokens"], 6)
    same = probe.report(m, before, best_weights, best_step=10, final_step=10)
    assert same["best"] == same["final"]  # best = final weights: scored once
    alone = probe.report(m, None)
    assert alone["best"] is None and alone["best_step"] is None and alone["final"]["perplexity_increase"] is None


def test_a_probe_longer_than_the_models_positions_fails_naming_the_key(tokenizer, tmp_path):
    from types import SimpleNamespace

    from harness.schema import ConfigError

    def task(forget):
        return SimpleNamespace(config=SimpleNamespace(forget=forget, cache_dir=tmp_path))

    with pytest.raises(ConfigError, match=r"^task.forget.max_length=128 is invalid: the model takes at most 64 positions$"):
        ForgetProbe.for_task(task(ForgetConfig(max_length=128)), tokenizer, model(), "cpu")
    assert ForgetProbe.for_task(task(None), tokenizer, model(), "cpu") is None
    probe = ForgetProbe.for_task(task(ForgetConfig(max_length=64, limit=3)), tokenizer, model(), "cpu")
    assert len(probe.chunks) == 3 and max(probe.chunks["length"]) <= 64
