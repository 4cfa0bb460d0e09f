"""Draw brainlib's modules and their imports as floors: a module sits one floor above the highest
module it imports, so every arrow points down and a cycle would show as an error.

    .venv/bin/python scripts/draw_imports.py [--out docs/figures/package.png]

Reads the package's own imports (`from .x import ...`, at any depth of a module) with `ast`; nothing
is imported or run.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "brainlib"


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {}
    for name in sorted(modules):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    used.add(node.module.split(".")[0])
                else:
                    used |= {a.name for a in node.names}
        graph[name] = used & modules - {name}
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    floor: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise SystemExit(f"import cycle: {' -> '.join((*path, name))}")
        if name not in floor:
            floor[name] = 1 + max((visit(d, (*path, name)) for d in graph[name]), default=0)
        return floor[name]

    for name in graph:
        visit(name, ())
    return floor


def draw(graph: dict[str, set[str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = floors(graph)
    by_floor: dict[int, list[str]] = {}
    for name in sorted(graph, key=lambda n: (floor[n], n)):
        by_floor.setdefault(floor[name], []).append(name)
    width = max(len(v) for v in by_floor.values())
    pos = {}
    for f, names in by_floor.items():
        for i, name in enumerate(names):
            pos[name] = ((i + 0.5) * width / len(names), f)
    fig, ax = plt.subplots(figsize=(2.0 * width, 1.1 * len(by_floor)))
    for name, deps in graph.items():
        for dep in deps:
            (x0, y0), (x1, y1) = pos[name], pos[dep]
            ax.annotate(
                "",
                xy=(x1, y1 + 0.18),
                xytext=(x0, y0 - 0.18),
                arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.7},
            )
    for name, (x, y) in pos.items():
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round", "fc": "#e8f0fe", "ec": "#3b6fb6"},
        )
    ax.set_xlim(0, width)
    ax.set_ylim(0.4, max(by_floor) + 0.6)
    ax.axis("off")
    ax.set_title("brainlib: modules by floor, arrows point to what a module imports")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures/package.png")
    args = parser.parse_args()
    graph = imports()
    floor = floors(graph)
    for name in sorted(graph, key=lambda n: (-floor[n], n)):
        print(f"floor {floor[name]:>2}  {name:<12} imports {', '.join(sorted(graph[name])) or '-'}")
    draw(graph, Path(args.out))
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
