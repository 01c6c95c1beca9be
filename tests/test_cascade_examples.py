"""The execution verifier (coserve.router.examples): examples read from the prompt, the answer's code
run on them in the sandbox, the ``examples_passed`` signal, and a check that learns from it."""

from __future__ import annotations

import time

import numpy as np

from coserve.router.check import AnswerCheck, Signals, signals_of
from coserve.router.examples import Example, examples_passed, prompt_examples
from coserve.types import Completion, Message, Usage

DOCTEST_PROMPT = '''Complete this Python function. Reply with the whole function in one ```python code block.

```python
from typing import List


def below_zero(operations: List[int]) -> bool:
    """ Detect if the balance ever falls below zero.
    >>> below_zero([1, 2, 3])
    False
    >>> below_zero([1, 2, -4,
    ...             5])
    True
    >>> below_zero([])
    False
    """
```'''

ONE_LINE_PROMPT = '''```python
def add_pair(a, b):
    """Add two numbers.
    Examples:
    add_pair(2, 3) == 5
    add_pair(-1, 1) ==> 0
    add_pair(0.1, 0.2) -> 0.3
    Input: a = 2, b = 3 (not an example: no call)
    """
```'''

RIGHT = """Here it is:
```python
from typing import List

def below_zero(operations: List[int]) -> bool:
    balance = 0
    for op in operations:
        balance += op
        if balance < 0:
            return True
    return False
```"""

# Wrong on the second example only (it never looks past the first element).
PARTLY_WRONG = """```python
def below_zero(operations):
    return bool(operations) and operations[0] < 0
```"""


def test_doctest_examples_are_read_from_the_prompt() -> None:
    assert prompt_examples(DOCTEST_PROMPT) == [
        Example("below_zero([1, 2, 3])", "False"),
        Example("below_zero([1, 2, -4,\n            5])", "True"),
        Example("below_zero([])", "False"),
    ]


def test_one_line_examples_of_the_asked_function_are_read() -> None:
    assert prompt_examples(ONE_LINE_PROMPT) == [
        Example("add_pair(2, 3)", "5"),
        Example("add_pair(-1, 1)", "0"),
        Example("add_pair(0.1, 0.2)", "0.3"),
    ]


def test_a_prompt_without_examples_is_unknown() -> None:
    assert prompt_examples("Write a poem about the sea.") == []
    assert examples_passed("Write a poem about the sea.", RIGHT) is None
    assert examples_passed("```python\ndef f(x):\n    pass\n```", RIGHT) is None


def test_a_right_answer_passes_and_a_wrong_one_fails() -> None:
    assert examples_passed(DOCTEST_PROMPT, RIGHT) == 1.0
    assert examples_passed(DOCTEST_PROMPT, PARTLY_WRONG) == 2 / 3
    assert examples_passed(DOCTEST_PROMPT, "I cannot help with that.") == 0.0
    assert examples_passed(DOCTEST_PROMPT, "```python\ndef below_zero(:\n```") == 0.0  # does not parse
    # floats compare with a tolerance: 0.1 + 0.2 is not 0.3 exactly
    assert examples_passed(ONE_LINE_PROMPT, "```python\ndef add_pair(a, b):\n    return a + b\n```") == 1.0
    wrong_below_one = "```python\ndef add_pair(a, b):\n    return a + b if a > 0 else 99\n```"
    assert examples_passed(ONE_LINE_PROMPT, wrong_below_one) == 2 / 3  # right for a = 2 and 0.1 only


def test_a_body_that_continues_the_stub_is_run_with_the_prompts_code() -> None:
    body = "    return any(sum(operations[: i + 1]) < 0 for i in range(len(operations)))\n"
    assert examples_passed(DOCTEST_PROMPT, body) == 1.0


def test_an_infinite_loop_is_stopped_and_fails() -> None:
    start = time.monotonic()
    loop = "```python\ndef below_zero(operations):\n    while True:\n        pass\n```"
    assert examples_passed(DOCTEST_PROMPT, loop) == 0.0
    # each example's 1 s timer, else the 4 s wall clock: far below a minute even on a loaded machine
    assert time.monotonic() - start < 60


def test_a_loop_at_import_and_a_memory_bomb_fail_cleanly() -> None:
    hang = "```python\nwhile True:\n    pass\ndef below_zero(operations):\n    return False\n```"
    assert examples_passed(DOCTEST_PROMPT, hang) == 0.0
    bomb = "```python\ndef below_zero(operations):\n    x = bytearray(4 << 30)\n    return False\n```"
    assert examples_passed(DOCTEST_PROMPT, bomb) == 0.0  # MemoryError under the 512 MiB limit: no example passes


def test_an_answer_that_exits_early_counts_as_failed() -> None:
    early = "```python\nimport os\nos._exit(0)\ndef below_zero(operations):\n    return False\n```"
    assert examples_passed(DOCTEST_PROMPT, early) == 0.0


def completion(text: str) -> Completion:
    return Completion(text, "stop", Usage(10, 20))


def test_signals_of_runs_the_examples_only_when_asked() -> None:
    messages = (Message("user", DOCTEST_PROMPT),)
    off = signals_of(completion(RIGHT), 0.9, messages)
    assert (off.examples, off.examples_passed) == (3, None)
    on = signals_of(completion(PARTLY_WRONG), 0.9, messages, run_examples=True)
    assert (on.examples, on.examples_passed) == (3, 2 / 3)
    chat = signals_of(completion("hi"), 0.9, (Message("user", "hello"),), run_examples=True)
    assert (chat.examples, chat.examples_passed) == (None, None)


def test_the_check_learns_from_examples_passed_where_nothing_else_separates() -> None:
    """Every other signal is the same for good and bad answers; only the examples tell them apart.
    Old rows (examples unknown) read as neither passed nor failed."""
    base = {"mean_logprob": -0.2, "min_logprob": -2.0, "tokens": 80, "finish": "stop", "confidence": 0.9}
    passed = [Signals(**base, examples=3, examples_passed=1.0)] * 20
    failed = [Signals(**base, examples=3, examples_passed=0.0)] * 20
    check = AnswerCheck(["coder"]).fit(passed + failed, ["coder"] * 40, [1.0] * 20 + [0.0] * 20)
    assert check.reads_examples()
    p_pass, p_fail, p_unknown = check.predict_proba([passed[0], failed[0], Signals(**base)], ["coder"] * 3)
    assert p_pass > 0.8 and p_fail < 0.2
    assert p_fail < p_unknown < p_pass
    blind = AnswerCheck(["coder"], features=("mean_logprob", "confidence")).fit(
        passed + failed, ["coder"] * 40, [1.0] * 20 + [0.0] * 20
    )
    assert not blind.reads_examples()
    assert np.allclose(blind.predict_proba([passed[0], failed[0]], ["coder"] * 2), 0.5)
