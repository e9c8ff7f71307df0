"""evaluate_model and generate_samples against a dense reference: the same model run one example at a
time, without padding, with the loss and the metric computed by hand."""

import copy
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

from harness.data import IGNORE_INDEX, MODEL_INPUTS, build_task, encode_prompt
from harness.scoring import evaluate_model, generate_samples
from harness.tiny import MINILM_VOCAB, tiny_bert, tiny_llama
from tests.data.helpers import MINILM, SEP, preset


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


def bert_for_minilm_vocab(num_labels):
    """The factory's BERT at MiniLM's vocabulary; 512 positions (BERT's default), as the pinned numbers were
    computed with."""
    return tiny_bert(vocab_size=MINILM_VOCAB, num_labels=num_labels, max_position_embeddings=512)


def model_inputs(example):
    return {k: torch.tensor([example[k]]) for k in MODEL_INPUTS if k in example}


@pytest.fixture(scope="module")
def rotten(tokenizer, cache):
    return build_task(preset("rotten_tomatoes", limit_train=8, limit_eval=64, cache_dir=cache), tokenizer, seed=0)


def test_classification_matches_the_unpadded_reference(rotten):
    model = bert_for_minilm_vocab(2)
    results = evaluate_model(model, rotten, batch_size=16, device="cpu")
    assert set(results) == {"loss", "accuracy", "f1"}
    losses, correct, tp, fp, fn = [], 0, 0, 0, 0
    with torch.no_grad():
        for example in rotten.eval:
            logits = model(**model_inputs(example)).logits[0]
            label = example["labels"]
            losses.append(F.cross_entropy(logits[None], torch.tensor([label])).item())
            pred = int(logits.argmax())
            correct += pred == label
            tp, fp, fn = tp + (pred == 1 == label), fp + (pred == 1 != label), fn + (pred == 0 != label)
    assert results["loss"] == pytest.approx(sum(losses) / 64, abs=1e-5)
    assert results["accuracy"] == correct / 64
    assert results["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # pinned: seeded random init, so a change in batching or masking shows up here
    assert results["accuracy"] == 26 / 64
    assert results["loss"] == pytest.approx(0.69539, abs=1e-4)


def test_mode_is_restored_and_max_batches_limits(rotten):
    model = bert_for_minilm_vocab(2)
    model.train()
    evaluate_model(model, rotten, batch_size=16, device="cpu")
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    first = evaluate_model(model, rotten, batch_size=16, device="cpu", max_batches=1)
    assert not model.training
    first_batch = rotten.eval_batches(16)[0]  # the 16 longest examples
    with torch.no_grad():
        batch = rotten.collate([rotten.eval[i] for i in first_batch])
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = torch.tensor([rotten.eval["labels"][i] for i in first_batch])
    assert first["accuracy"] == (logits.argmax(-1) == labels).float().mean().item()


def test_autocast_context_is_used(rotten):
    model = bert_for_minilm_vocab(2)
    calls = []

    def autocast():
        calls.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    fp32 = evaluate_model(model, rotten, batch_size=32, device="cpu")
    bf16 = evaluate_model(model, rotten, batch_size=32, device="cpu", autocast=autocast)
    assert len(calls) == 2 and bf16["loss"] == pytest.approx(fp32["loss"], abs=0.02)


def test_regression_scores_mse_and_correlations(tokenizer, tmp_path):
    rows = [{"s1": f"sentence {i}", "s2": f"other {i % 7}", "score": (i * 37 % 50) / 10} for i in range(60)]
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = preset("stsb", source="files", path=None, subset=None, data_files=str(path), text_columns=["s1", "s2"],
                 label_column="score", cache_dir=str(tmp_path))
    task = build_task(cfg, tokenizer, seed=0)
    model = bert_for_minilm_vocab(1)
    results = evaluate_model(model, task, batch_size=4, device="cpu")
    with torch.no_grad():
        preds = [model(**model_inputs(e)).logits[0, 0].item() for e in task.eval]
    refs = task.eval["labels"]
    mse = sum((p - r) ** 2 for p, r in zip(preds, refs)) / len(refs)
    assert results["loss"] == pytest.approx(mse, rel=1e-4)
    assert results["pearsonr"] == pytest.approx(pearsonr(preds, refs)[0], abs=1e-4)
    assert set(results) == {"loss", "pearsonr", "spearmanr"}


def llama_for_minilm_vocab():
    """The factory's Llama at MiniLM's vocabulary with plain multi-head attention (4 k/v heads) and
    MiniLM's special ids, as the pinned loss was computed with."""
    return tiny_llama(vocab_size=MINILM_VOCAB, max_position_embeddings=128, num_key_value_heads=4,
                      bos_token_id=101, eos_token_id=SEP, pad_token_id=0)


@pytest.fixture(scope="module")
def chat(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    pairs = [("hello there", "general kenobi"), ("what is ai?", "a field of computer science"),
             ("how are you", "fine, thanks"), ("tell me a joke", "i would, but it is too long")]
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    cfg = preset("chatterbot", source="files", data_files={"train": str(path), "eval": str(path)},
                 cache_dir=str(folder))
    return build_task(cfg, tokenizer, seed=0)


def test_causal_loss_is_mean_over_response_tokens(chat):
    model = llama_for_minilm_vocab()
    results = evaluate_model(model, chat, batch_size=3, device="cpu")
    total, count = 0.0, 0
    with torch.no_grad():
        for example in chat.eval:
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            for t, label in enumerate(example["labels"]):
                if label != IGNORE_INDEX:
                    total += F.cross_entropy(logits[t - 1][None], torch.tensor([label]), reduction="sum").item()
                    count += 1
    assert count == sum(len(e["labels"]) - e["labels"].count(IGNORE_INDEX) for e in chat.eval)
    assert results["loss"] == pytest.approx(total / count, abs=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert results["loss"] == pytest.approx(10.3528, abs=1e-3)  # ~ ln(30522) = 10.33 at random init


@pytest.mark.parametrize("rows", [1, 2])
def test_causal_scoring_slices_batches_under_the_logits_budget(chat, monkeypatch, rows):
    """A budget of `rows` rows of the batch's length: the batch of 4 runs as ceil(4 / rows) forwards,
    none over the budget, and the loss is the unsliced one (the pinned reference above)."""
    import harness.scoring as scoring

    model = llama_for_minilm_vocab()
    whole = evaluate_model(model, chat, batch_size=4, device="cpu")
    length = max(len(e["input_ids"]) for e in chat.eval)
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", rows * length * MINILM_VOCAB)
    shapes = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(out.logits.shape),
                                       with_kwargs=True)
    sliced = evaluate_model(model, chat, batch_size=4, device="cpu")
    hook.remove()
    assert [s[0] for s in shapes] == [rows] * (4 // rows)
    assert all(s[0] * s[1] * s[2] <= scoring.LOGITS_BUDGET for s in shapes)
    assert sliced["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert sliced["loss"] == pytest.approx(10.3528, abs=1e-3)


def test_rows_per_forward_keeps_a_smollm2_batch_within_512_mib():
    class Model:  # only the config is read
        config = type("Config", (), {"vocab_size": 49_152})()

    from harness.scoring import LOGITS_BUDGET, _rows_per_forward

    assert LOGITS_BUDGET * 4 == 512 * 2**20  # float32 bytes
    assert _rows_per_forward(Model(), 128, LOGITS_BUDGET) == 21  # 21 x 128 x 49,152 = 132.1 M <= 134.2 M
    assert _rows_per_forward(Model(), 4096, LOGITS_BUDGET) == 1  # never zero rows
    assert _rows_per_forward(object(), 128, LOGITS_BUDGET) is None  # no vocabulary size: not sliced


def test_generate_samples_is_greedy_decoding(chat, tokenizer):
    model = llama_for_minilm_vocab()
    model.train()
    samples = generate_samples(model, tokenizer, chat, n=2, max_new_tokens=5)
    assert model.training and [s["prompt"] for s in samples] == chat.raw["eval"]["prompt"][:2]
    for sample in samples:
        ids = encode_prompt(tokenizer, sample["prompt"])
        new = []
        with torch.no_grad():
            model.eval()
            for _ in range(5):
                token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(token)
                if token == SEP:
                    break
        assert sample["generation"] == tokenizer.decode(new, skip_special_tokens=True).strip()
        assert sample["reference"] in chat.raw["eval"]["response"]


def test_generate_samples_needs_a_causal_task(rotten, tokenizer):
    with pytest.raises(ValueError, match="rotten_tomatoes is classification"):
        generate_samples(bert_for_minilm_vocab(2), tokenizer, rotten)


def stored_order(task):
    """The same task with evaluation batches in stored order (what evaluation did before sorting)."""
    unsorted = copy.copy(task)
    unsorted.eval_batches = lambda batch_size, split="eval": [
        list(range(i, min(i + batch_size, len(task.split(split))))) for i in range(0, len(task.split(split)), batch_size)]
    return unsorted


def test_eval_batches_are_sorted_longest_first_and_cover_the_split(rotten):
    batches = rotten.eval_batches(16)
    lengths = rotten.eval["length"]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(rotten.eval)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [16, 16, 16, 16]


def mixed_predictions_bert():
    """A tiny BERT whose classifier bias puts its predictions near the boundary: both classes
    predicted, so a prediction scored against another example's label would change the metrics."""
    model = bert_for_minilm_vocab(2)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 0.04]))
    return model


@pytest.mark.parametrize("batch_size", [7, 16, 64])
def test_length_sorting_leaves_classification_metrics_bit_identical(rotten, batch_size):
    """Every metric computed from predictions is bit-identical sorted or not. The loss moves in its
    9th digit: a padded batch's logits differ in the last float bits with the padding width (the
    unsorted evaluation's loss moved the same way with eval_batch_size)."""
    model = mixed_predictions_bert()
    sorted_run = evaluate_model(model, rotten, batch_size, "cpu")
    assert 0.2 < sorted_run["f1"] < 0.9  # both classes predicted
    for other in (evaluate_model(model, stored_order(rotten), batch_size, "cpu"),
                  evaluate_model(model, rotten, 1, "cpu")):  # batch 1: no padding at all
        assert (sorted_run["accuracy"], sorted_run["f1"]) == (other["accuracy"], other["f1"])
        assert sorted_run["loss"] == pytest.approx(other["loss"], rel=1e-7)


def test_length_sorting_leaves_causal_lm_loss_equal(chat):
    model = llama_for_minilm_vocab()
    sorted_run = evaluate_model(model, chat, 4, "cpu")
    for other in (evaluate_model(model, stored_order(chat), 4, "cpu"), evaluate_model(model, chat, 1, "cpu")):
        assert sorted_run["loss"] == pytest.approx(other["loss"], rel=1e-7)
