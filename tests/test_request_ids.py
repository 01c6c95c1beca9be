"""Request ids: the decision log, feedback and the cluster's ingress replicas key on them, so two
processes must never hand out the same one (a per-process counter with a millisecond clock did)."""

from __future__ import annotations

import multiprocessing
import re
import time

import pytest

from coserve.types import Message, Request, new_request_id


def _ids(n: int) -> list[str]:
    return [Request(messages=(Message("user", "hi"),), model="coserve").id for _ in range(n)]


def _child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(_ids(200))


def test_ids_have_the_openai_prefix_and_are_unique_in_a_process() -> None:
    ids = _ids(1000)
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids)
    assert new_request_id() not in ids


def test_a_forked_process_never_repeats_its_parents_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fork copies the parent's state: a counter-and-clock id continues the same sequence in both, and
    # two processes inside one millisecond (the clock held still here) hand out the same ids, as the
    # two ingress replicas of tests/test_ray_state.py once did.
    monkeypatch.setattr(time, "time", lambda: 1_796_063_214.712)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    mine = _ids(200)
    theirs = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert not set(mine) & set(theirs)
