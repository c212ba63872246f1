#!/usr/bin/env python3
"""The package tree (modules per package) and every import cycle among gateway/ and relay/.

Static: each module's imports are read with `ast` (function-local imports included, relative
imports resolved), so a cycle hidden behind a lazy import still counts. A cycle is a strongly
connected component of more than one module. Run: `python scripts/import_graph.py`.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "relay")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project's packages."""
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (the deepest known module each import names)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()

    def add(dotted: str) -> None:
        # `from a.b import c` may name the module a.b.c or an attribute of a.b.
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            out.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                add(f"{prefix}.{alias.name}" if alias.name != "*" else prefix)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: _imported(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return sorted(found)


def tree(root: Path = ROOT) -> list[str]:
    """One line per package: its dotted name and how many modules it holds directly."""
    counts: dict[str, int] = defaultdict(int)
    for name, path in modules(root).items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        counts[pkg] += path.name != "__init__.py"
    return [f"{'  ' * pkg.count('.')}{pkg.rpartition('.')[2]}/  {counts[pkg]} modules"
            for pkg in sorted(counts)]


# Top-level modules that belong to a room of their own or to a package beside them.
OWN_ROOMS = {"gateway.smtpd": "gateway.smtp", "gateway.spool": "gateway.spool"}


def room(module: str) -> str:
    """The room a module lives in: its package below gateway/ (gateway.pipeline.stages.core, gateway.smtp, …;
    gateway/smtpd.py counts with the SMTP session's package beside it, gateway/spool.py is a room of its
    own), `gateway` for the service at the top (app, cli), `relay` for relay/."""
    if module in OWN_ROOMS:
        return OWN_ROOMS[module]
    parts = module.split(".")
    if parts[0] == "relay":
        return "relay"
    depth = 3 if parts[:2] == ["gateway", "pipeline"] else 2
    if len(parts) < depth or (len(parts) == depth and not (ROOT.joinpath(*parts)).is_dir()):
        return ".".join(parts[:depth - 1])    # a module at the top of gateway/ (app, cli) or gateway/pipeline/
    return ".".join(parts[:depth])


def rooms(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Room -> the other rooms its modules import."""
    out: dict[str, set[str]] = defaultdict(set)
    for mod, deps in g.items():
        out[room(mod)]
        for dep in deps:
            if room(dep) != room(mod):
                out[room(mod)].add(room(dep))
    return dict(out)


def main() -> int:
    print("\n".join(tree()))
    g = graph()
    print("\nwho imports whom (room -> rooms it imports):")
    r = rooms(g)
    for name in sorted(r):
        print(f"  {name:28} -> {', '.join(sorted(r[name])) or '-'}")
    loops = cycles(r)
    print(f"room cycles: {len(loops)}" + "".join(f"\n  {' '.join(c)}" for c in loops))
    found = cycles(g)
    print(f"\nimport cycles: {len(found)}")
    for comp in found:
        print(f"  ({len(comp)}) " + " ".join(comp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
