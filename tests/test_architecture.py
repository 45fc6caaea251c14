"""The layout rules a newcomer relies on, checked on the source: the harness's layers import only downwards
(bench/__init__.py draws them), no import cycle between modules, the harness uses methods only through the
`methods` package (its public names), methods never import the harness, and argparse lives in bench/cli.py
alone."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _module_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted([*REPO.glob("bench/**/*.py"), *REPO.glob("methods/*.py")]):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[name] = deps
    return found


# Each layer may import the layers below it (and itself); bench.cli, bench.commands, bench.api and bench.__main__
# sit on top.
LAYERS = {"core": 0, "campaign": 1, "reporting": 1, "tools": 1, "tuning": 2}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "bench" and parts[1] in LAYERS else None


def test_every_harness_module_lives_in_a_layer():
    loose = [m for m in _module_imports() if m.startswith("bench.") and _layer(m) is None
             and m not in ("bench.cli", "bench.commands", "bench.api", "bench.__main__") and m.removeprefix("bench.") not in LAYERS]
    assert not loose, f"modules outside bench/{{{','.join(LAYERS)}}}/: {loose}"


def test_layers_import_only_downwards():
    upward = []
    for module, deps in _module_imports().items():
        here = _layer(module)
        if here is None:
            continue
        for dep in deps:
            there = _layer(dep)
            if dep.startswith(("bench.cli", "bench.commands", "bench.api")) or (there is not None and there != here and LAYERS[there] >= LAYERS[here]):
                upward.append(f"{module} -> {dep}")
    assert not upward, upward


def test_methods_do_not_import_the_harness():
    reach = sorted(f"{m} -> {d}" for m, deps in _module_imports().items() if m.startswith("methods")
                   for d in deps if d == "bench" or d.startswith("bench."))
    assert not reach, reach


def test_no_import_cycle():
    imports = _module_imports()
    graph = {m: {d for d in deps if d in imports and d != m} for m, deps in imports.items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


PUBLIC_METHOD_NAMES = ("REGISTRY", "Method", "MethodConfig", "DatasetInfo", "Batch", "TrainingSet", "kmeans", "KMEANS_BACKENDS",
                       "TRAINING_EXAMPLES", "REC_LOSSES", "ENCODERS", "Encoder", "encoder_class", "encoder_of_state")


def test_the_harness_uses_methods_only_through_the_package():
    for module, deps in _module_imports().items():
        if module.startswith("bench"):
            inner = sorted(d for d in deps if d.startswith("methods.") and d.count(".") >= 1
                           and d.split(".")[1] not in PUBLIC_METHOD_NAMES)
            assert not inner, f"{module} reaches into methods/ internals: {inner}"


def test_only_the_cli_sees_argparse():
    users = sorted(m for m, deps in _module_imports().items() if "argparse" in deps)
    assert users == ["bench.cli"], users


def test_every_option_of_every_command_has_help():
    import argparse

    from bench.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:  # argparse keeps no public list of a parser's options
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "bench")
    assert not missing, missing
