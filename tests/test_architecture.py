"""The import rule of the house (README, "Architecture"), checked on the source with `ast`:

- no `registry` module imports `worker` (the domain knows nothing of Celery, the CLI or HTTP);
- the job and canary stories (`registry.jobs`, `registry.canary`) import no door;
- the demo (`worker.demo`) is imported by no door, except lazily by the CLI's `demo` and
  `fake-openai` commands, and it drives the CLI only through its public `main(argv)`;
- a migration imports nothing of the live code (it must keep working when the models change).

Every import counts, also one inside a function or under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOORS = ("worker.tasks", "worker.cli", "worker.web", "worker.app", "worker.run")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (for `from a import b`, both a and a.b)
    function: str | None  # the enclosing function, None at module level
    line: int

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        return f"{self.module}:{self.line}{where} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(path: Path) -> list[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(Import(module, base, function, child.lineno))
                found.extend(
                    Import(module, f"{base}.{a.name}", function, child.lineno) for a in child.names
                )
            visit(child, function)

    visit(ast.parse(path.read_text(), str(path)), None)
    return found


def _imports(package: str) -> list[Import]:
    return [i for path in sorted((ROOT / package).rglob("*.py")) for i in _imports_of(path)]


def _within(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def test_the_registry_imports_nothing_of_the_worker() -> None:
    offending = [i for i in _imports("registry") if _within(i.target, "worker")]
    assert not offending, "\n".join(map(str, offending))


def test_the_job_and_canary_stories_import_no_door() -> None:
    offending = [
        i
        for i in _imports("registry")
        if _within(i.module, "registry.jobs", "registry.canary") and _within(i.target, *DOORS)
    ]
    assert not offending, "\n".join(map(str, offending))


def test_only_the_demo_command_imports_the_demo_and_lazily() -> None:
    uses = [
        i
        for i in _imports("worker")
        if _within(i.target, "worker.demo") and not _within(i.module, "worker.demo")
    ]
    allowed = {("worker.cli.system", "cmd_demo"), ("worker.cli.system", "cmd_fake_openai")}
    assert all((i.module, i.function) in allowed for i in uses), "\n".join(map(str, uses))
    assert uses, "the CLI's demo command should import worker.demo (lazily)"


def test_the_demo_uses_only_the_cli_public_main() -> None:
    # `from worker import cli` then `cli.main(argv)`: no command module, so no cycle through them.
    internals = [
        i
        for i in _imports("worker/demo")
        if _within(i.target, "worker.cli") and i.target != "worker.cli"
    ]
    assert not internals, "\n".join(map(str, internals))


def test_migrations_import_no_live_code() -> None:
    offending = [
        i
        for i in _imports("migrations/versions")
        if _within(i.target, "registry", "worker", "migrations")
    ]
    assert not offending, "\n".join(map(str, offending))


def test_the_rule_sees_every_kind_of_import() -> None:
    # The checker itself: module-level, lazy and relative imports are all found.
    source = ROOT / "worker" / "cli" / "system.py"
    found = {(i.target, i.function) for i in _imports_of(source)}
    assert ("worker.demo.flow", "cmd_demo") in found
    assert ("registry.settings", None) in found
