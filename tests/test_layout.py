"""The package's wiring, read from the source with ``ast``: no import cycle among detlab modules,
no ``except ImportError`` around an in-tree module, and the prediction path depends only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "detlab"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """detlab modules a file imports, at any depth (function-level imports are edges too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imported(ast.parse(p.read_text()), set(mods)) - {m} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_detlab_modules():
    edges = graph()
    assert len(edges) > 40  # the walk found the package
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_error_guard_around_an_in_tree_module():
    mods = set(modules())
    guarded = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not catches & {"ImportError", "ModuleNotFoundError"}:
                continue
            inside = imported(ast.Module(body=node.body, type_ignores=[]), mods)
            guarded += [f"{name} guards {m}" for m in sorted(inside)]
    assert guarded == []


def test_prediction_depends_only_downwards():
    """What deploys a model (predict, the run folder, the ONNX runtime) never reaches the trainer,
    the evaluator, the exporter or the HTML report."""
    edges = graph()
    above = (
        "detlab.engine.train",
        "detlab.engine.runlog",
        "detlab.evaluation",
        "detlab.export",
        "detlab.report.html",
    )
    for low in ("detlab.predict", "detlab.runfolder", "detlab.onnx_runtime"):
        reached = _reached(edges, low)
        assert not [m for m in reached if m.startswith(above)], (low, sorted(reached))


def _reached(edges: dict[str, set[str]], start: str) -> set[str]:
    reached, todo = set(), [start]
    while todo:
        for m in edges[todo.pop()] - reached:
            reached.add(m)
            todo.append(m)
    return reached


def test_models_and_config_sit_below_the_engine():
    """The networks, their weights and the config are read by the engine, the evaluator and the
    commands; none of them reaches back up (files are read through detlab.torchfile)."""
    edges = graph()
    above = ("detlab.engine", "detlab.evaluation", "detlab.report", "detlab.export", "detlab.predict")
    for low in [m for m in edges if m.startswith("detlab.models")] + ["detlab.config", "detlab.torchfile"]:
        assert not [m for m in _reached(edges, low) if m.startswith(above)], (
            low,
            sorted(_reached(edges, low)),
        )
