"""Grouped splits: each seed draws its own split of few groups, classes stay on both sides,
and repeated splits report a mean and a spread."""

import numpy as np
import pytest

from geodino.errors import DataError
from geodino.evaluation.linear import group_split


def tiles(count: int = 16, per_tile: int = 20) -> tuple[list[str], list[int]]:
    """Chips of ``count`` tiles, each with its own mixture of four classes."""
    rng = np.random.default_rng(0)
    groups, labels = [], []
    for tile in range(count):
        mixture = rng.dirichlet(np.ones(4))
        for _ in range(per_tile):
            groups.append(f"tile{tile:02d}")
            labels.append(int(rng.choice(4, p=mixture)))
    return groups, labels


def test_seeds_draw_different_splits_of_sixteen_tiles() -> None:
    groups, labels = tiles()
    test_sides = set()
    for seed in range(4):
        train, test = group_split(len(groups), groups, 0.3, seed, labels=labels)
        train_groups = {groups[i] for i in train}
        test_groups = {groups[i] for i in test}
        assert not train_groups & test_groups
        assert set(np.asarray(labels)[test]) <= set(np.asarray(labels)[train])
        assert 0.15 <= len(test) / len(groups) <= 0.45
        test_sides.add(frozenset(test_groups))
    assert len(test_sides) == 4
    # the same seed draws the same split
    again = group_split(len(groups), groups, 0.3, 2, labels=labels)[1]
    assert again.tolist() == group_split(len(groups), groups, 0.3, 2, labels=labels)[1].tolist()


def test_grouped_split_without_labels_and_with_one_group() -> None:
    groups = [f"g{i // 3}" for i in range(30)]
    train, test = group_split(30, groups, 0.3, 0)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in test})
    assert len(train) and len(test)
    with pytest.raises(DataError, match="at least two groups"):
        group_split(4, ["a"] * 4, 0.3, 0)
