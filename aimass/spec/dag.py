"""DAG helpers: topological order and parallel levels of a pipeline's steps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["find_cycle", "topological_order", "upstream_closure"]


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as a list of names (first == last), or None. ``edges[n]`` are the steps n depends on."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in edges}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for d in edges.get(n, ()):
            if d not in color:
                continue
            if color[d] == GREY:
                return stack[stack.index(d):] + [d]
            if color[d] == WHITE and (c := visit(d)):
                return c
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(edges):
        if color[n] == WHITE and (c := visit(n)):
            return list(reversed(c))
    return None


def topological_order(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """Steps in an order where every dependency comes first; ties broken by name for determinism."""
    deps = {n: set(d) for n, d in edges.items()}
    order: list[str] = []
    ready = sorted(n for n, d in deps.items() if not d)
    done: set[str] = set()
    while ready:
        n = ready.pop(0)
        order.append(n)
        done.add(n)
        newly = [m for m, d in deps.items() if m not in done and m not in ready and d <= done]
        ready = sorted(set(ready) | set(newly))
    if len(order) != len(deps):
        raise ValueError(f"cycle among {sorted(set(deps) - done)}")
    return order


def upstream_closure(edges: Mapping[str, Iterable[str]], name: str) -> set[str]:
    """Every step ``name`` depends on, directly or not."""
    seen: set[str] = set()
    todo = list(edges.get(name, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return seen
