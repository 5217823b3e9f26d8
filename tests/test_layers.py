"""The tree keeps its shape: layers import only downwards, the processes never import one
another, and no module imports itself back through others (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Lowest first. A module may import its own layer and the ones below, never above.
LAYERS = [
    ("base", ("g4l.settings", "g4l.errors", "g4l.keys", "g4l.log", "g4l.audio", "g4l.wav_splice", "g4l.embedded",
              "g4l.balancer", "g4l.media")),
    ("engine", ("g4l.engine",)),
    ("store", ("g4l.store",)),
    ("jobs", ("g4l.jobs", "g4l.context")),
    ("services", ("g4l.services",)),
    ("processes", ("g4l.worker", "g4l.hls", "g4l.web", "g4l.launcher")),
    ("client", ("g4l.cli",)),
]
#: The processes are separate programs: none imports another's code.
PROCESSES = ("g4l.worker", "g4l.hls", "g4l.web")
#: Clients of the server (the ``g4l`` CLI): they speak the wire protocols only.
CLIENTS = ("g4l.cli",)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "g4l").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every g4l module ``path`` imports, anywhere in it (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _layer(module: str) -> int:
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items() if name != "g4l"}


def test_layers_import_only_downwards() -> None:
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in _graph().items() for d in sorted(deps) if d != "g4l" and _layer(d) > _layer(m)]
    assert upward == []


def test_processes_do_not_import_each_other() -> None:
    def process(module: str) -> str | None:
        return next((p for p in PROCESSES if module == p or module.startswith(p + ".")), None)

    crossing = [f"{m} imports {d}" for m, deps in _graph().items() for d in sorted(deps)
                if process(m) and process(d) and process(m) != process(d)]
    assert crossing == []


def test_the_client_imports_no_server_module() -> None:
    """g4l.cli uses plugin_protocol and libraries only: it works against any g4l server."""
    def client(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in CLIENTS)

    graph = _graph()
    assert any(client(m) for m in graph)
    outside = [f"{m} imports {d}" for m, deps in graph.items() if client(m) for d in sorted(deps) if not client(d)]
    assert outside == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_the_tree() -> None:
    """The graph is real: it knows the modules and an edge everybody has."""
    graph = _graph()
    assert len(graph) > 60
    assert "g4l.jobs.lifecycle" in graph["g4l.worker.worker"]
    assert "g4l.services.specs" in graph["g4l.services.sessions"]



def test_the_web_api_imports_nothing_that_wires_it() -> None:
    """g4l.web.app is the web's one composition root: g4l.web.api imports only modules
    below it (services, leaf helpers of g4l.web such as the relay or offload), never one
    that itself reaches g4l.web.api (the app, the compat routes, the sockets)."""
    graph = _graph()

    def in_api(module: str) -> bool:
        return module == "g4l.web.api" or module.startswith("g4l.web.api.")

    def reaches_api(module: str, seen: set[str]) -> bool:
        if module in seen:
            return False
        seen.add(module)
        return any(in_api(d) or reaches_api(d, seen) for d in graph.get(module, ()))

    api = [m for m in graph if in_api(m)]
    assert "g4l.web.api.jobs" in api
    upward = [f"{m} imports {d}" for m in api for d in sorted(graph[m])
              if not in_api(d) and reaches_api(d, set())]
    assert upward == []
