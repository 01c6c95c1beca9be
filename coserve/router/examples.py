"""An execution verifier for code answers: run the examples the prompt itself gives against the answer.

    find     -> ``prompt_examples``: doctest lines of the prompt (``>>> call`` then the expected
                output line(s), ``...`` continuations) and one-line examples of the asked function
                (``name(args) == value``, also ``==>``, ``=>``, ``->``, ``➞``), each kept only when
                both sides parse as Python; read from the prompt's text alone, never from a test
                suite or a reference answer
    build    -> the prompt's code (imports, helpers, the stub; its first fenced block, when that
                parses) and the answer's code (``coserve.router.verify.extract_code``: the code the
                HumanEval grader runs too), then the examples, each under a 1 s timer, compared by
                value (floats with a tolerance) or, failing that, by their printed form
    run      -> ``coserve.sandbox.run_python``: ``python -I`` in a fresh temporary directory, an
                empty environment, CPU / address-space / file-size / open-file limits, a wall-clock
                time-out that kills the process group. It is a fence against accidents (a loop that
                never ends, a memory bomb, a stray file), not a security boundary: the network is
                cut only where the kernel lets an unprivileged user make a network namespace (the
                socket guard inside the program is easily undone by the code it guards)

``examples_passed`` is the fraction of examples that gave the expected value (0.0 when the answer has
no runnable code or the run did not finish; None when the prompt has no examples). Running model
code is opt-in (``routing.cascade.run_examples``, ``coserve outcomes --run-examples``). This module
knows nothing about experts, scores, suites or the engine.
"""

from __future__ import annotations

import ast
import re
import secrets
import warnings
from dataclasses import dataclass

from coserve.router.verify import extract_code
from coserve.sandbox import run_python

__all__ = ["Example", "examples_passed", "prompt_examples"]

MAX_EXAMPLES = 12  # examples kept per prompt (the first ones)
TIMEOUT_S = 4.0  # wall clock for the whole run (CPU: 5 s); each example also has a 1 s timer
MEMORY_BYTES = 512 << 20  # address space
FILE_BYTES = 1 << 20  # any file written
OPEN_FILES = 32
_PROMPT_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)
_PROMPT_LINE = re.compile(r"^\s*>>>\s?(.*)$")
_MORE_LINE = re.compile(r"^\s*\.\.\.\s?(.*)$")
_QUOTES = ('"""', "'''")
_ARROW = r"\s*(?:==>|==|=>|->|➞|→)\s*"


@dataclass(frozen=True)
class Example:
    """One example of the prompt: ``source`` evaluated should give ``want`` (None: a setup statement)."""

    source: str
    want: str | None


def _parses(source: str, mode: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source, mode=mode)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _doctests(text: str) -> list[Example]:
    lines = text.splitlines()
    found: list[Example] = []
    index = 0
    while index < len(lines):
        start = _PROMPT_LINE.match(lines[index])
        index += 1
        if start is None:
            continue
        source = [start.group(1)]
        while index < len(lines) and (more := _MORE_LINE.match(lines[index])):
            source.append(more.group(1))
            index += 1
        want: list[str] = []
        while index < len(lines) and lines[index].strip() and not _PROMPT_LINE.match(lines[index]):
            line = lines[index].strip()
            index += 1
            closing = min((line.find(q) for q in _QUOTES if q in line), default=-1)
            if closing >= 0:
                want.extend([line[:closing].strip()] if line[:closing].strip() else [])
                break
            want.append(line)
        code = "\n".join(source)
        if _parses(code, "exec"):
            found.append(Example(code, "\n".join(want) if want else None))
    return found


def _one_liners(text: str, name: str) -> list[Example]:
    pattern = re.compile(rf"^\s*(?:[-*]\s*)?({re.escape(name)}\s*\(.*\)){_ARROW}(.+?)\s*$", re.MULTILINE)
    found = []
    for match in pattern.finditer(text):
        call, want = match.group(1), match.group(2).rstrip(".,;")
        if _parses(call, "eval") and _parses(want, "eval"):
            found.append(Example(call, want))
    return found


def _prompt_code(prompt: str) -> str:
    """The prompt's code: its first fenced block, else the prompt itself."""
    fenced = _PROMPT_FENCE.search(prompt)
    return fenced.group(1) if fenced else prompt


def prompt_examples(prompt: str) -> list[Example]:
    """The examples a prompt gives (module doc): doctests, else one-line examples of the asked
    function; setup statements (doctest lines without output) are kept in order, before their use."""
    found = _doctests(prompt)
    if not any(e.want is not None for e in found):
        names = _DEF.findall(prompt)
        found = _one_liners(prompt, names[-1]) if names else []
    checked = [e for e in found if e.want is not None][:MAX_EXAMPLES]
    if not checked:
        return []
    last = found.index(checked[-1])
    return found[: last + 1]


def _defines(code: str, name: str | None) -> bool:
    if not _parses(code, "exec"):
        return False
    if name is None:
        return True
    tree = ast.parse(code)
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in ast.walk(tree))


def _runnable(prompt: str, answer: str) -> list[str] | None:
    """The pieces of code to execute in order (the prompt's code, then the answer's), or None when
    the answer holds no code that defines the asked function."""
    head = _prompt_code(prompt)
    head = head if _parses(head, "exec") else ""
    names = _DEF.findall(head or prompt)
    name = names[-1] if names else None
    code = extract_code(answer)
    if code.strip() and _defines(code, name):
        return [head, code] if head else [code]
    if head and code.strip() and _parses(head + code, "exec"):
        joined = head + code  # the body alone, continuing the prompt's stub
        tree = ast.parse(joined)
        bodies = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
        if bodies and len(bodies[-1].body) > 1:  # more than the stub's docstring
            return [joined]
    return None


_RUNNER = """
import contextlib as _cl, io as _io, math as _math, os as _os, signal as _signal, sys as _sys

class _Slow(Exception):
    pass

def _alarm(*_):
    raise _Slow()

def _same(got, want):
    if isinstance(got, float) or isinstance(want, float):
        try:
            return _math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError, OverflowError):
            return False
    if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)) and type(got) is type(want):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    try:
        return bool(got == want)
    except Exception:
        return False

_signal.signal(_signal.SIGALRM, _alarm)
_g = {"__name__": "__main__"}
for _code in _CODE:
    try:
        _signal.setitimer(_signal.ITIMER_REAL, 1.0)
        exec(compile(_code, "<answer>", "exec"), _g)
    except BaseException:
        pass
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
_passed = 0
for _source, _want in _EXAMPLES:
    _ok = False
    _out = _io.StringIO()
    try:
        _signal.setitimer(_signal.ITIMER_REAL, 1.0)
        with _cl.redirect_stdout(_out):
            try:
                _got = eval(compile(_source, "<example>", "eval"), _g)
            except SyntaxError:
                exec(compile(_source, "<example>", "exec"), _g)
                _got = None
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        if _want is not None:
            _text = _want.strip()
            try:
                _ok = _same(_got, eval(_want, dict(_g)))
            except BaseException:
                _ok = False
            _printed = _out.getvalue().strip()
            _ok = _ok or (_got is None and _printed == _text) or repr(_got) == _text or str(_got) == _text
            _ok = _ok or (isinstance(_got, bool) and str(_got).lower() == _text.lower())
    except BaseException:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    _passed += _ok
_sys.stderr.write("\\n" + _MARKER + " " + str(_passed) + "\\n")
_sys.stderr.flush()
_os._exit(3)
"""


def examples_passed(prompt: str, answer: str) -> float | None:
    """The fraction of the prompt's examples the answer's code passes, run in the sandbox (module doc);
    None when the prompt gives none."""
    examples = prompt_examples(prompt)
    checked = sum(e.want is not None for e in examples)
    if not checked:
        return None
    code = _runnable(prompt, answer)
    if code is None:
        return 0.0
    marker = f"coserve-examples-{secrets.token_hex(8)}"
    pairs = [(e.source, e.want) for e in examples]
    program = f"_CODE = {code!r}\n_EXAMPLES = {pairs!r}\n_MARKER = {marker!r}\n{_RUNNER}"
    result = run_python(program, TIMEOUT_S, MEMORY_BYTES, FILE_BYTES, OPEN_FILES)
    if result.status != "failed" or not result.detail.startswith(marker + " "):
        return 0.0  # timed out, or the answer ended the process before the examples were counted
    return int(result.detail.split()[-1]) / checked
