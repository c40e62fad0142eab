"""Lint, format and type checks run with the tests: one command checks everything."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_lint_and_format():
    lint = run("ruff", "check", "assetcache", "tests", "scripts")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", "assetcache", "tests", "scripts")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_package():
    result = run("mypy", "assetcache")
    assert result.returncode == 0, result.stdout + result.stderr


# -- the layout's rules ------------------------------------------------------------------

PACKAGE = ROOT / "assetcache"
#: A string that is a SQL statement (keywords in capitals, as the storage package writes them).
SQL = re.compile(
    r"^\s*(SELECT\b.+\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\S+\s+SET\b|DELETE\s+FROM\b)",
    re.S,
)


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant but docstrings, with f-strings' literal parts joined."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            out.append((node.lineno, node.value))
    return out


def test_import_layering_contract():
    """pyproject.toml's [tool.importlinter]: every import runs downward (function-level
    and TYPE_CHECKING ones too), no circles, and the emulator imports nothing of the client."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_sql_outside_the_storage_package():
    found = []
    for path in modules():
        if "_storage" in path.parts:
            continue
        for line, text in strings(ast.parse(path.read_text())):
            if SQL.match(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}")
    assert found == []


def test_the_sql_rule_sees_sql():
    """The rule above is not blind: it finds the statements the storage package holds."""
    seen = [
        text
        for path in modules()
        if "_storage" in path.parts
        for _, text in strings(ast.parse(path.read_text()))
        if SQL.match(text)
    ]
    assert any(t.startswith("SELECT") for t in seen) and any("INSERT" in t for t in seen)
    assert any(t.lstrip().startswith(("UPDATE", "DELETE")) for t in seen)


def test_no_mixins_and_no_getattr_hooks():
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Mixin"):
                found.append(f"{path.name}:{node.lineno}: class {node.name}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "self"
            ):
                name = node.args[1]
                first = name.values[0] if isinstance(name, ast.JoinedStr) and name.values else name
                if isinstance(first, ast.Constant) and str(first.value).startswith("_"):
                    found.append(f"{path.name}:{node.lineno}: getattr(self, {ast.unparse(name)})")
    assert found == []


def test_tests_probe_through_the_public_api_or_named_helpers():
    """No test reaches into a cache's engine or store; ``helpers.py`` names the few views."""
    pattern = re.compile(r"\b\w+\.(_engine|store)\b")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        if path.name not in ("helpers.py", "test_quality.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
