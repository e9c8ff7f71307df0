"""Batching: padding to the longest example, train order as a function of (seed, epoch), length grouping."""

import dataclasses

import pytest
import torch

from tests.data.helpers import CLS, PAD, SEP


def test_batches_are_padded_to_the_longest_example(rotten):
    batch = next(iter(rotten.eval_loader(8)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [rotten.eval["length"][i] for i in rotten.eval_batches(8)[0]]
    assert batch["input_ids"].shape == (8, max(lengths)) and batch["labels"].shape == (8,)
    assert batch["labels"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in zip(batch["input_ids"], lengths):
        assert row[0] == CLS and row[n - 1] == SEP and (row[n:] == PAD).all()
    sizes = [len(b["labels"]) for b in rotten.train_loader(40)]
    assert sorted(sizes) == [16, 40, 40]  # grouped batches come shuffled


@pytest.mark.parametrize("group_by_length", [False, True])
def test_train_order_is_a_function_of_seed_and_epoch(rotten, group_by_length):
    rotten = dataclasses.replace(rotten, group_by_length=group_by_length)
    first = rotten.train_batches(16, seed=1, epoch=0)
    assert first == rotten.train_batches(16, seed=1, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(96))
    assert first != rotten.train_batches(16, seed=1, epoch=1)
    assert first != rotten.train_batches(16, seed=2, epoch=0)
    assert rotten.train_batches(16, seed=1, epoch=0) != rotten.train_batches(16, seed=0, epoch=1)
    assert rotten.train_batches(16) == rotten.train_batches(16, seed=3)  # build seed is the default
    # resume: skipping k batches yields exactly the remaining batches
    full = [b["input_ids"] for b in rotten.train_loader(16, seed=1, epoch=0)]
    resumed = [b["input_ids"] for b in rotten.train_loader(16, seed=1, epoch=0, skip_batches=4)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))


def test_group_by_length_cuts_padding_and_keeps_every_example(rotten):
    def padding(batches):
        lengths = rotten.train["length"]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert rotten.group_by_length  # the default (conf/task/rotten_tomatoes.yaml)
    grouped, shuffled = rotten, dataclasses.replace(rotten, group_by_length=False)
    batches = grouped.train_batches(8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(96))
    assert batches == grouped.train_batches(8, seed=0, epoch=0)
    assert padding(batches) < 0.5 * padding(shuffled.train_batches(8, seed=0, epoch=0))
    # which examples meet and the batch order stay random: another epoch groups other examples
    assert {tuple(sorted(b)) for b in batches} != {tuple(sorted(b)) for b in grouped.train_batches(8, seed=0, epoch=1)}
