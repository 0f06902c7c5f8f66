"""Every pair of perceptual hashes within a Hamming distance, without comparing all pairs.

Multi-index hashing (Norouzi, Punjani, Fleet): the hash bits are cut into
chunks; if two hashes differ in at most ``t`` bits, then by the pigeonhole
principle at least one chunk ``c`` differs in at most ``r_c`` bits as long as
``sum(r_c + 1) > t``. So each hash only meets the hashes whose chunk lies
within ``r_c`` bits of its own, found by bucket lookup; candidates are then
checked on the full hash. The chunk count is chosen from a cost model (few
wide chunks for large sets, many narrow ones for small sets), and every step
is a vectorised numpy pass over all hashes at once, so 100,000 hashes take
seconds, not the hours of an all-pairs loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import combinations
from math import comb

import numpy as np

_MAX_CHUNK_BITS = 24  # bucket tables of at most 16 M counters

if hasattr(np, "bitwise_count"):

    def _popcount(words: np.ndarray) -> np.ndarray:
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)

else:  # numpy < 2.0
    _BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(words: np.ndarray) -> np.ndarray:
        return _BYTE_BITS[words.view(np.uint8)].sum(axis=1, dtype=np.int64)


def pack(hashes: Sequence[bytes]) -> np.ndarray:
    """Equal-length hash bytes as an ``(N, words)`` uint64 array (zero-padded)."""
    if not hashes:
        return np.zeros((0, 1), dtype=np.uint64)
    width = -(-len(hashes[0]) // 8) * 8
    buf = np.zeros((len(hashes), width), dtype=np.uint8)
    for row, value in enumerate(hashes):
        buf[row, : len(value)] = np.frombuffer(value, dtype=np.uint8)
    return buf.view(np.uint64)


def distances(packed: np.ndarray, rows: np.ndarray, to: int) -> np.ndarray:
    """Hamming distance of ``packed[rows]`` to ``packed[to]``."""
    return _popcount(packed[rows] ^ packed[to])


def _masks(bits: int, radius: int) -> Iterator[int]:
    """Every ``bits``-wide value with at most ``radius`` bits set, 0 first."""
    for weight in range(radius + 1):
        for positions in combinations(range(bits), weight):
            yield sum(1 << p for p in positions)


def _ball(bits: int, radius: int) -> int:
    return sum(comb(bits, k) for k in range(radius + 1))


def plan_chunks(nbits: int, threshold: int, n: int) -> list[tuple[int, int]]:
    """``(width, radius)`` per chunk (radius -1: chunk not searched), cheapest first.

    Cost of a chunk: one vectorised pass per probe mask (about ``n`` work)
    plus the candidates it yields (about ``n**2 / 2**width``).
    """
    units = threshold + 1
    lowest = max(1, -(-nbits // _MAX_CHUNK_BITS))
    best: tuple[float, list[tuple[int, int]]] | None = None
    for m in range(lowest, max(lowest, min(units, nbits)) + 1):
        widths = [nbits // m + (1 if c < nbits % m else 0) for c in range(m)]
        radii = [units // m + (1 if c < units % m else 0) - 1 for c in range(m)]
        cost = sum(
            _ball(w, r) * (n + n * n / 2**w) for w, r in zip(widths, radii, strict=True) if r >= 0
        )
        if best is None or cost < best[0]:
            best = (cost, list(zip(widths, radii, strict=True)))
    assert best is not None
    return best[1]


def close_pairs(
    packed: np.ndarray, threshold: int, nbits: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance <= ``threshold``: arrays ``(i, j, d)``.

    Identical hashes are folded first, so a thousand byte copies cost one
    bucket entry, not a million candidate pairs.
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(packed) < 2:
        return empty, empty, empty
    nbits = nbits or packed.shape[1] * 64
    uniq, inverse = np.unique(packed, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    pi, pj, pd = _unique_pairs(uniq, threshold, nbits)
    # Expand back: members of one unique hash pair with each other (d=0) and
    # with every member of a close unique hash.
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(uniq))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out_i, out_j, out_d = [], [], []
    for group in np.flatnonzero(counts > 1):
        members = order[starts[group] : starts[group] + counts[group]]
        a, b = np.triu_indices(len(members), 1)
        out_i.append(members[a])
        out_j.append(members[b])
        out_d.append(np.zeros(len(a), dtype=np.int64))
    if len(pi):
        ni, nj = counts[pi], counts[pj]
        reps = ni * nj
        ii = np.repeat(pi, reps)
        jj = np.repeat(pj, reps)
        dd = np.repeat(pd, reps)
        offset = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        nj_rep = np.repeat(nj, reps)
        a = order[starts[ii] + offset // nj_rep]
        b = order[starts[jj] + offset % nj_rep]
        out_i.append(np.minimum(a, b))
        out_j.append(np.maximum(a, b))
        out_d.append(dd)
    if not out_i:
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _unique_pairs(
    packed: np.ndarray, threshold: int, nbits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(packed)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    bits = np.unpackbits(packed.view(np.uint8), axis=1)[:, :nbits]
    rows = np.arange(n)
    found_i, found_j, found_d = [], [], []
    start = 0
    for width, radius in plan_chunks(nbits, threshold, n):
        chunk = bits[:, start : start + width]
        start += width
        if radius < 0:
            continue
        keys = chunk.astype(np.int64) @ (np.int64(1) << np.arange(width, dtype=np.int64))
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << width)
        starts = np.cumsum(counts) - counts
        low_rows: dict[int, np.ndarray] = {}
        for mask in _masks(width, radius):
            if mask == 0:
                src = rows
            else:
                # Visit each pair of buckets {v, v ^ mask} once: from the side
                # whose highest mask bit is 0.
                high = 1 << (mask.bit_length() - 1)
                if high not in low_rows:
                    low_rows[high] = rows[(keys & high) == 0]
                src = low_rows[high]
            query = keys[src] ^ mask
            hits = counts[query]
            total = int(hits.sum())
            if total == 0:
                continue
            i = np.repeat(src, hits)
            first = np.repeat(starts[query] - (np.cumsum(hits) - hits), hits)
            j = order[first + np.arange(total)]
            if mask == 0:
                keep = i < j
                i, j = i[keep], j[keep]
            d = _popcount(packed[i] ^ packed[j])
            ok = d <= threshold
            found_i.append(np.minimum(i[ok], j[ok]))
            found_j.append(np.maximum(i[ok], j[ok]))
            found_d.append(d[ok])
    if not found_i:
        return empty, empty, empty
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    _, first = np.unique(i * n + j, return_index=True)  # a pair may match in several chunks
    return i[first], j[first], d[first]


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes given edges ``(i, j)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
