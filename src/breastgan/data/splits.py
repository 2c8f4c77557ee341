"""Patient-level, label-stratified, near-duplicate-aware splits; reduced training sets; shards.

The unit of assignment is a connected group of images: images sharing a patient, or linked by a
near-duplicate relation, always land in the same split (otherwise the test set leaks). Everything
is a pure function of its inputs and the seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class SplitItem:
    item_id: str
    patient_id: str
    label: str
    group: str | None = None  # near-duplicate group; None when the image has no near-duplicate


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def split_units(items: Sequence[SplitItem]) -> dict[str, str]:
    """item id -> unit id, where a unit joins all images of one patient and of one near-duplicate group."""
    uf = _UnionFind()
    for it in items:
        uf.union(f"item:{it.item_id}", f"patient:{it.patient_id}")
        if it.group:
            uf.union(f"item:{it.item_id}", f"group:{it.group}")
    return {it.item_id: uf.find(f"item:{it.item_id}") for it in items}


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def _unit_label(labels: Iterable[str]) -> str:
    counts = Counter(labels)
    return sorted(counts, key=lambda k: (-counts[k], k))[0]


def _rng(seed: int, *salt: str) -> np.random.Generator:
    digest = hashlib.sha256(("\x00".join((str(seed),) + salt)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def assign_splits(items: Sequence[SplitItem], fractions: Mapping[str, float], seed: int = 0) -> dict[str, str]:
    """item id -> split name. Stratified by each unit's majority label, balanced by image count.

    Within each label stratum, units are shuffled (seeded) and placed largest first into the split
    furthest below its target share of that stratum's images.
    """
    _check_fractions(fractions)
    members, strata = _units_by_label(items)
    names = list(fractions)
    out: dict[str, str] = {}
    for label in sorted(strata):
        units = strata[label]
        order = _rng(seed, "split", label).permutation(len(units))
        units = sorted((units[i] for i in order), key=lambda u: -len(members[u]))  # stable: shuffle order kept among equal sizes
        total = sum(len(members[u]) for u in units)
        assigned = dict.fromkeys(names, 0)
        for u in units:
            best = max(names, key=lambda s: (fractions[s] * total - assigned[s], fractions[s]))
            assigned[best] += len(members[u])
            for it in members[u]:
                out[it.item_id] = best
    return out


def _units_by_label(items: Sequence[SplitItem]) -> tuple[dict[str, list[SplitItem]], dict[str, list[str]]]:
    """Group items into split units (patient / near-duplicate group) and the units by label stratum."""
    unit_of = split_units(items)
    members: dict[str, list[SplitItem]] = defaultdict(list)
    for it in items:
        members[unit_of[it.item_id]].append(it)
    strata: dict[str, list[str]] = defaultdict(list)
    for unit in sorted(members):
        strata[_unit_label(i.label for i in members[unit])].append(unit)
    return members, strata


def reduced_training_subset(items: Sequence[SplitItem], splits: Mapping[str, str], fraction: float, seed: int = 0, train: str = "train") -> set[str]:
    """Item ids of a ``fraction`` of the training units (patients/groups), stratified by label."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    train_items = [it for it in items if splits.get(it.item_id) == train]
    if fraction == 1.0:
        return {it.item_id for it in train_items}
    members, strata = _units_by_label(train_items)
    keep: set[str] = set()
    for label in sorted(strata):
        units = strata[label]
        k = max(1, int(round(fraction * len(units))))
        for i in _rng(seed, "reduce", label).permutation(len(units))[:k]:
            keep.update(it.item_id for it in members[units[i]])
    return keep


def assign_shards(values: Mapping[str, object], n_shards: int, reference_ids: Iterable[str] | None = None) -> dict[str, int]:
    """item id -> shard in [0, n_shards), by a manifest column (dm-GAN shards by breast size).

    Numeric columns: ``reference_ids`` (the training items) sorted by value and cut into equal-count
    shards; other items go to the shard whose value range contains them. Other columns: one shard per distinct
    value in sorted order, wrapped modulo ``n_shards``.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    ref = list(reference_ids) if reference_ids is not None else list(values)
    try:
        numeric = {k: float(v) for k, v in values.items()}  # type: ignore[arg-type]
    except (TypeError, ValueError):
        numeric = None
    if numeric is not None:
        # reference items: equal-count shards by rank (ties broken by id, so equal sizes still split);
        # other items: the shard whose value range contains them
        ranked = sorted((k for k in ref if k in numeric), key=lambda k: (numeric[k], k)) or sorted(numeric, key=lambda k: (numeric[k], k))
        out = {k: min(n_shards - 1, i * n_shards // len(ranked)) for i, k in enumerate(ranked)}
        edges = [numeric[ranked[min(len(ranked) - 1, (j * len(ranked)) // n_shards)]] for j in range(1, n_shards)]
        for k, v in numeric.items():
            if k not in out:
                out[k] = int(np.searchsorted(np.asarray(edges), v, side="right"))
        return out
    distinct = sorted({str(v) for v in values.values()})
    index = {v: i % n_shards for i, v in enumerate(distinct)}
    return {k: index[str(v)] for k, v in values.items()}


def hamming_pairs(h: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i < j) of 64-bit hashes differing in at most ``limit`` bits, and their distances."""
    n = len(h)
    ii, jj, dd = [], [], []
    for i in range(n - 1):
        x = np.bitwise_xor(h[i + 1 :], h[i])
        dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        hit = np.flatnonzero(dist <= limit)
        ii.append(np.full(hit.size, i))
        jj.append(i + 1 + hit)
        dd.append(dist[hit])
    if not ii:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(ii).astype(int), np.concatenate(jj).astype(int), np.concatenate(dd).astype(int)


def _correlations(thumbnails: np.ndarray) -> np.ndarray:
    t = np.asarray(thumbnails, dtype=np.float64).reshape(len(thumbnails), -1)
    t = t - t.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    t = t / np.where(norms > 0, norms, 1.0)
    return t @ t.T


@dataclass(frozen=True)
class NearDuplicateLinks:
    """Which image pairs are linked, by which rule (a pair counts once, under the first rule that links it)."""

    pairs: dict[str, list[tuple[str, str]]]

    def counts(self) -> dict[str, int]:
        return {rule: len(p) for rule, p in self.pairs.items()}

    def groups(self, ids: Sequence[str]) -> dict[str, str]:
        uf = _UnionFind()
        for p in self.pairs.values():
            for a, b in p:
                uf.union(a, b)
        roots = {i: uf.find(i) for i in ids}
        sizes = Counter(roots.values())
        return {i: r for i, r in roots.items() if sizes[r] > 1}


def near_duplicate_links(
    ids: Sequence[str],
    hashes: np.ndarray | None = None,
    thumbnails: np.ndarray | None = None,
    max_hamming: int = 4,
    min_correlation: float = 0.97,
    dhashes: np.ndarray | None = None,
    loose_hamming: int = 0,
    loose_correlation: float = 0.90,
    max_dhash: int = 10,
) -> NearDuplicateLinks:
    """Pairs linked by each rule.

    - ``phash``: 64-bit perceptual hashes differ in at most ``max_hamming`` bits;
    - ``correlation``: 32x32 thumbnails correlate at ``min_correlation`` or more (crops the hash misses);
    - ``second_check``: perceptual hashes within the looser ``loose_hamming`` bits (0: rule off), confirmed
      by a second, independent similarity: thumbnail correlation >= ``loose_correlation`` or difference
      hashes (``dhashes``) within ``max_dhash`` bits. One hash alone at a loose threshold would also link
      unrelated images; two independent measures agreeing do not (docs/data-preparation.md has the
      BUSI pairs each rule links).
    """
    n = len(ids)
    linked: set[tuple[int, int]] = set()
    out: dict[str, list[tuple[str, str]]] = {"phash": [], "correlation": [], "second_check": []}

    def add(rule: str, i: int, j: int) -> None:
        key = (min(i, j), max(i, j))
        if key not in linked:
            linked.add(key)
            out[rule].append((ids[key[0]], ids[key[1]]))

    h = np.asarray(hashes, dtype=np.uint64) if hashes is not None and n else None
    corr = _correlations(thumbnails) if thumbnails is not None and n else None
    if h is not None:
        ii, jj, dd = hamming_pairs(h, max(max_hamming, loose_hamming))
        for i, j, d in zip(ii, jj, dd):
            if d <= max_hamming:
                add("phash", int(i), int(j))
    if corr is not None:
        ci, cj = np.nonzero(np.triu(corr >= min_correlation, k=1))
        for i, j in zip(ci, cj):
            add("correlation", int(i), int(j))
    if h is not None and loose_hamming > max_hamming:
        dh = np.asarray(dhashes, dtype=np.uint64) if dhashes is not None else None
        for i, j, d in zip(ii, jj, dd):
            i, j = int(i), int(j)
            if d <= max_hamming:
                continue
            by_corr = corr is not None and corr[i, j] >= loose_correlation
            by_dhash = dh is not None and bin(int(dh[i] ^ dh[j])).count("1") <= max_dhash
            if by_corr or by_dhash:
                add("second_check", i, j)
    return NearDuplicateLinks(out)


def near_duplicate_groups(
    ids: Sequence[str],
    hashes: np.ndarray | None = None,
    thumbnails: np.ndarray | None = None,
    max_hamming: int = 4,
    min_correlation: float = 0.97,
    **second_check,
) -> dict[str, str]:
    """id -> group id for images with at least one near-duplicate (rules: :func:`near_duplicate_links`).

    Links are transitive; the group id is its smallest member id. ``second_check``: ``dhashes``,
    ``loose_hamming``, ``loose_correlation``, ``max_dhash`` (off unless ``loose_hamming`` is set).
    """
    return near_duplicate_links(ids, hashes, thumbnails, max_hamming, min_correlation, **second_check).groups(ids)
