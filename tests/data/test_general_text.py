"""The forgetting probe's text: which documents, the fixed split, and the chunks (harness/data/general_text.py)."""

import copy

import pytest

from harness.data import GENERAL_TEXTS, ForgetConfig, general_chunks, general_documents, split_of, task_config
from harness.schema import ConfigError
from tests.data.helpers import CLS, preset

ALL = list(GENERAL_TEXTS)


def test_the_four_texts_have_the_documented_documents():
    counts = {name: len(read()) for name, read in GENERAL_TEXTS.items()}
    assert counts == {"hamlet": 20, "convention_2012": 189, "convention_2016": 60, "debates_2016": 58}
    hamlet = GENERAL_TEXTS["hamlet"]()
    assert hamlet[0].startswith("SCENE I. Elsinore.") and all(s.startswith("SCENE ") for s in hamlet)
    debate = GENERAL_TEXTS["debates_2016"]()[0]
    speakers = {"HOLT", "CLINTON", "TRUMP", "RADDATZ", "COOPER", "WALLACE", "QUIJANO", "KAINE", "PENCE"}
    assert sum(line.split(": ", 1)[0] in speakers for line in debate.splitlines()) == 20  # statements hold newlines
    assert debate.startswith("HOLT: Good evening from Hofstra University")  # the first debate, in file order


def test_the_split_partitions_whole_documents_by_their_hash():
    shares = {s: general_documents(ALL, s) for s in ("train", "eval", "test")}
    assert {s: len(d) for s, d in shares.items()} == {"train": 264, "eval": 36, "test": 27}
    ids = {s: set(d["doc_id"]) for s, d in shares.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["eval"] & ids["test"]) and not (ids["train"] & ids["eval"])
    assert sum(map(len, ids.values())) == 327 and all(split_of(i) == s for s, part in ids.items() for i in part)
    test = shares["test"]
    assert test[0]["text"] == GENERAL_TEXTS[test[0]["doc_id"].split(":")[0]]()[int(test[0]["doc_id"].split(":")[1])]


@pytest.mark.parametrize("bos", [None, "[CLS]"])
def test_chunks_cut_each_document_into_consecutive_pieces(tokenizer, tmp_path, bos):
    """MiniLM's tokenizer has no bos: the pieces are text only; given one (and no chat template),
    every piece starts with it and it counts against max_length."""
    if bos:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.bos_token = bos
    lead = [CLS] if bos else []
    cfg = ForgetConfig(files=["hamlet", "convention_2016"], max_length=64)
    chunks = general_chunks(cfg, tokenizer, f"fp-{bos}", tmp_path)
    assert chunks.column_names == ["chunk_id", "input_ids", "attention_mask", "labels", "length"]
    docs = general_documents(cfg.files, "test")
    by_doc = {}
    for row in chunks:
        assert 2 <= row["length"] == len(row["input_ids"]) <= 64 and row["labels"] == row["input_ids"]
        assert row["input_ids"][:len(lead)] == lead
        doc, piece = row["chunk_id"].rsplit(":", 1)
        by_doc.setdefault(doc, {})[int(piece)] = row["input_ids"][len(lead):]
    for doc_id, text in zip(docs["doc_id"], docs["text"]):
        pieces = by_doc[doc_id]
        assert sorted(pieces) == list(range(len(pieces)))  # no piece lost
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert [t for p in sorted(pieces) for t in pieces[p]] == whole
        assert all(len(pieces[p]) == 64 - len(lead) for p in sorted(pieces)[:-1])  # only the last is short


def test_chunks_are_deterministic_cached_and_limited_in_md5_order(tokenizer, tmp_path):
    import hashlib

    cfg = ForgetConfig(max_length=128)
    first = general_chunks(cfg, tokenizer, "fp", tmp_path)
    assert len(list((tmp_path / "general_text" / "fp").glob("chunks-*.arrow"))) == 1
    again = general_chunks(cfg, tokenizer, "fp", tmp_path)
    assert again["input_ids"] == first["input_ids"] and again["chunk_id"] == first["chunk_id"]
    ids = first["chunk_id"]
    assert ids == sorted(ids, key=lambda i: hashlib.md5(i.encode()).hexdigest())
    assert len({i.split(":")[0] for i in ids[:12]}) >= 3  # the fixed shuffle mixes the texts
    limited = general_chunks(ForgetConfig(max_length=128, limit=5), tokenizer, "fp", tmp_path)
    assert limited["chunk_id"] == ids[:5]
    lengths = [len(ids) for ids in tokenizer(list(general_documents(ALL, "test")["text"]), add_special_tokens=False)["input_ids"]]
    assert len(first) == sum(-(-n // 128) for n in lengths) and sum(first["length"]) == sum(lengths)
    assert (len(first), sum(first["length"])) == (192, 22_700)  # MiniLM's WordPiece, test share, 128 tokens


def test_bad_probe_settings_name_the_key():
    chat = preset("chatterbot")
    assert isinstance(task_config(chat).forget, ForgetConfig) and task_config(chat).forget.limit == 32
    with pytest.raises(ConfigError, match=r"task.forget.files=\['macbeth'\] is invalid: a list of distinct names among hamlet"):
        task_config({**chat, "forget": {"files": ["macbeth"]}})
    with pytest.raises(ConfigError, match=r"task.forget.max_length='long' is invalid: must be an integer"):
        task_config({**chat, "forget": {"max_length": "long"}})
    with pytest.raises(ConfigError, match=r"task.forget.split='all' is invalid: choose train, eval or test"):
        task_config({**chat, "forget": {"split": "all"}})
    with pytest.raises(ConfigError, match=r"task.forget.limit=0 is invalid"):
        task_config({**chat, "forget": {"limit": 0}})
    with pytest.raises(ConfigError, match=r"task.forget='yes' is invalid: a mapping"):
        task_config({**chat, "forget": "yes"})
    with pytest.raises(ConfigError, match=r"task.forget=.* is invalid: the forgetting probe scores a causal LM"):
        task_config(preset("rotten_tomatoes", forget={"limit": 4}))
    assert task_config({**chat, "forget": None}).forget is None
