"""Samplers: an epoch is fixed by (seed, epoch); ranks split it without overlap; a resumed epoch skips
what was trained without changing what comes next; validation shards hold every sample once."""

from __future__ import annotations

import pytest
import torch

from deepfake.data.samplers import EpochSampler, SeededSamples, ShardSampler


def test_an_epoch_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert sorted(index for index, _ in a) == list(range(10))
    b.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in b]
    # The order is torch.randperm seeded from (seed, epoch), like a shuffled DataLoader reseeded each epoch.
    assert [i for i, _ in a] == torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003 + 2)).tolist()


def test_seeds_do_not_replay_each_others_epochs():
    """Replicates with seeds 0, 1, 2 must not see the same orders shifted by an epoch (seed + epoch did)."""
    orders = set()
    for seed in range(3):
        sampler = EpochSampler(50, seed=seed)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            orders.add(tuple(index for index, _ in sampler))
    assert len(orders) == 9


@pytest.mark.parametrize(("n", "world"), [(1, 4), (2, 7), (3, 3)])
def test_every_rank_gets_its_share_even_with_fewer_samples_than_ranks(n, world):
    shares = [[index for index, _ in EpochSampler(n, rank=r, world_size=world)] for r in range(world)]
    assert [len(share) for share in shares] == [EpochSampler(n, world_size=world).per_rank] * world
    assert {index for share in shares for index in share} == set(range(n))


def test_ranks_split_the_epoch_like_one_process_with_their_batches_side_by_side():
    n, world, batch = 11, 2, 2
    one = [index for index, _ in EpochSampler(n, seed=1)]
    shares = [[index for index, _ in EpochSampler(n, seed=1, rank=r, world_size=world)] for r in range(world)]
    assert [len(s) for s in shares] == [6, 6]  # 11 padded to 12: the first image once more
    padded = one + one[:1]
    assert sorted(shares[0] + shares[1]) == sorted(padded)
    # The k-th batches of both ranks together are the k-th batch of one process with batch 2 x 2.
    for k in range(3):
        together = shares[0][k * batch : (k + 1) * batch] + shares[1][k * batch : (k + 1) * batch]
        assert sorted(together) == sorted(padded[k * world * batch : (k + 1) * world * batch])


def test_skipping_resumes_with_the_same_samples_and_seeds():
    sampler = EpochSampler(20, seed=7, rank=1, world_size=2)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.skip(4)
    assert list(sampler) == whole[4:] and len(sampler) == 6
    sampler.skip(0)
    assert list(sampler) == whole
    with pytest.raises(ValueError):
        sampler.skip(11)
    seeds = [seed for _, seed in whole]
    assert len(set(seeds)) == len(seeds)


def test_a_sample_is_augmented_from_its_own_seed_and_leaves_the_process_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    samples = SeededSamples(Noise())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = samples[(2, 123)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(samples[(2, 123)], first) and not torch.equal(samples[(2, 124)], first)


@pytest.mark.parametrize(("n", "world"), [(29, 2), (5, 3), (2, 4)])
def test_validation_shards_hold_every_sample_exactly_once(n, world):
    shards = [list(ShardSampler(n, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ShardSampler(n, rank=r, world_size=world)) for r in range(world)] == [len(s) for s in shards]


class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return {"index": index, "target": index % 2}


def test_training_drops_the_partial_last_batch_and_resumes_within_the_rest():
    from omegaconf import OmegaConf

    from deepfake.errors import ConfigError
    from deepfake.tasks.data_setup import make_loader

    settings = {"batch_size": 4, "num_workers": 0, "prefetch_factor": 2}
    cpu = torch.device("cpu")
    dropping = make_loader(_Numbers(), OmegaConf.create({**settings, "drop_last": True}), device=cpu, train_seed=0)
    keeping = make_loader(_Numbers(), OmegaConf.create({**settings, "drop_last": False}), device=cpu, train_seed=0)
    dropped = [batch["index"].tolist() for batch in dropping]
    kept = [batch["index"].tolist() for batch in keeping]
    assert [len(b) for b in dropped] == [4, 4] and [len(b) for b in kept] == [4, 4, 2]
    assert dropped == kept[:2]  # the same order; only the partial batch goes
    # A resume after batch 1 (trainer: skip the samples already trained on) serves the rest only.
    dropping.sampler.skip(4)
    assert len(dropping) == 1 and [b["index"].tolist() for b in dropping] == dropped[1:]
    # Scoring loaders keep every image, whatever drop_last says.
    scoring = make_loader(_Numbers(), OmegaConf.create({**settings, "drop_last": True}), device=cpu)
    assert sum(len(b["index"]) for b in scoring) == 10
    with pytest.raises(ConfigError, match=r"dataset.batch_size=16 is more than the 10 training images"):
        make_loader(_Numbers(), OmegaConf.create({**settings, "batch_size": 16, "drop_last": True}), device=cpu,
                    train_seed=0)  # fmt: skip
