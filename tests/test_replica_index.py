"""The ingress's expert -> hosts index (HostBook.hosts_of): the same choices as a scan of every node,
for seeded random placements, reports, loads and failures, and kept in step when the placement
changes and when a host withdraws an expert."""

from __future__ import annotations

import random

from coserve.distributed.ray_choice import DOWN_FOR_S, HostBook

RANK = {"active": 0, "ram": 1, "disk": 2}


class Reference:
    """What the book knows, kept apart, and the choice made by looking at every node in turn."""

    def __init__(self, placed: dict[str, set[str]]):
        self.placed = {n: set(e) for n, e in placed.items()}
        self.tiers: dict[str, dict[str, str]] = {}
        self.down_until: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}

    def choose(self, expert: str, now: float) -> str | None:
        best: tuple[int, int, str] | None = None
        for node in self.placed:
            if expert not in self.placed[node] or self.down_until.get(node, 0.0) > now:
                continue
            key = (RANK[self.tiers.get(node, {}).get(expert, "disk")], self.in_flight.get(node, 0), node)
            best = key if best is None or key < best else best
        return None if best is None else best[2]

    def hosting(self, expert: str) -> list[str]:
        return sorted(n for n, experts in self.placed.items() if expert in experts)


def _placement(rng: random.Random, nodes: list[str], experts: list[str]) -> dict[str, set[str]]:
    return {n: {e for e in experts if rng.random() < rng.choice((0.05, 0.3, 0.8))} for n in nodes}


def _agree(book: HostBook, reference: Reference, experts: list[str], now: float) -> None:
    for expert in [*experts, "unplaced"]:
        assert book.choose(expert, now=now) == reference.choose(expert, now), expert
        assert book.hosting(expert) == reference.hosting(expert), expert
        assert [v.name for v in book.views(expert, now=now)] == reference.hosting(expert), expert


def test_index_chooses_as_the_scan_for_random_placements_and_follows_changes() -> None:
    rng = random.Random(20261130)
    for _ in range(150):
        nodes = [f"n{i}" for i in range(rng.randint(1, 12))]
        experts = [f"e{i}" for i in range(rng.randint(1, 30))]
        placed = _placement(rng, nodes, experts)
        book, reference = HostBook(placed), Reference(placed)
        for node in nodes:
            if rng.random() < 0.8:  # some hosts have not reported yet: their experts count as DISK
                tiers = {e: rng.choice(list(RANK)) for e in placed[node] if rng.random() < 0.7}
                book.report(node, tiers)
                reference.tiers[node] = tiers
            load = rng.randrange(4)
            book.in_flight[node] = reference.in_flight[node] = load
        now = 1000.0
        for node in rng.sample(nodes, rng.randint(0, len(nodes))):
            failed_at = now - rng.uniform(0, 2 * DOWN_FOR_S)  # some still down, some up again
            book.fail(node, now=failed_at)
            reference.down_until[node] = failed_at + DOWN_FOR_S
        _agree(book, reference, experts, now)

        replaced = _placement(rng, nodes[: rng.randint(1, len(nodes))], experts)  # some nodes get nothing
        book.place(replaced, version=2)
        reference.placed = {n: set(e) for n, e in replaced.items()}
        _agree(book, reference, experts, now)

        for _ in range(5):
            node, expert = rng.choice(nodes), rng.choice(experts)
            if node in replaced:
                book.withdraw(node, expert)
                reference.placed[node].discard(expert)
        _agree(book, reference, experts, now)


def test_index_after_re_placement_and_withdrawal() -> None:
    book = HostBook({"a": ["x", "y"], "b": ["y"], "c": []})
    assert book.hosts_of == {"x": ("a",), "y": ("a", "b")}
    book.place({"b": ["x"], "c": ["x", "y"]}, version=4)
    assert book.hosts_of == {"x": ("b", "c"), "y": ("c",)}  # a is no longer named: it gets nothing
    assert book.choose("x", now=0.0) == "b" and book.choose("y", now=0.0) == "c"
    book.withdraw("c", "y")
    assert book.hosts_of == {"x": ("b", "c")} and book.choose("y", now=0.0) is None
    book.fail("b", now=0.0)
    assert book.choose("x", now=1.0) == "c"  # b down: the index keeps it, the choice skips it
    assert book.choose("x", now=DOWN_FOR_S) == "b"  # up again, and first by name
