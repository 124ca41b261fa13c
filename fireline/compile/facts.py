"""Facts a step requires must be provided by a step that has finished before it starts.

Checked on the compiled nodes of a whole playbook, includes and parallel groups expanded,
because only there is "finished before" known: a fact provided by a sibling branch of the same
parallel group may not exist yet when the step runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from fireline.modules import Registry
from fireline.plan import Node, ParallelNode, StepNode
from fireline.playbook.loader import Problem

__all__ = ["fact_problems"]


def fact_problems(
    nodes: list[Node], uses_lines: Mapping[tuple[str, str], int | None], registry: Registry
) -> list[Problem]:
    """Every required fact not provided earlier; ``uses_lines`` maps (file, step) to its line."""
    return _FactCheck(uses_lines, registry).run(nodes, set(), None)[0]


class _FactCheck:
    def __init__(
        self, uses_lines: Mapping[tuple[str, str], int | None], registry: Registry
    ) -> None:
        self.uses_lines = uses_lines
        self.registry = registry

    def run(
        self,
        nodes: list[Node],
        available: set[str],
        via: str | None,
        peers: frozenset[str] = frozenset(),
    ) -> tuple[list[Problem], set[str]]:
        problems: list[Problem] = []
        have = set(available)
        for node in nodes:
            if isinstance(node, StepNode):
                for fact in node.requires:
                    if fact not in have:
                        problems.append(self._problem(node, fact, via, fact in peers))
                have |= set(node.provides)
            elif isinstance(node, ParallelNode):
                provided = [_provides(b) for b in node.branches]
                added: set[str] = set()
                for i, branch in enumerate(node.branches):
                    others = frozenset().union(*(p for j, p in enumerate(provided) if j != i))
                    found, after = self.run([branch], have, via, peers | others)
                    problems += found
                    added |= after
                have |= added
            else:
                inner = f"playbook '{node.plan.name}' included by step '{node.id}'"
                found, after = self.run(node.plan.nodes, have, inner, peers)
                problems += found
                have |= after
        return problems, have

    def _problem(self, node: StepNode, fact: str, via: str | None, parallel: bool) -> Problem:
        providers = self.registry.providers(fact)
        where = f" (in {via})" if via else ""
        hint = (
            "; a step running in parallel with it provides it, but may not have finished: "
            "move that step before the parallel group"
            if parallel
            else ""
        )
        file = node.source.file if node.source else "?"
        line = self.uses_lines.get((file, node.id)) or (node.source.line if node.source else None)
        return Problem(
            file,
            line,
            node.id,
            "uses",
            f"step '{node.id}' ({node.action.module}) requires fact '{fact}', which no earlier "
            f"step provides{where}{hint}; add a step that provides it before this one (modules "
            f"providing it: {', '.join(providers) or 'none registered'})",
        )


def _provides(node: Node) -> set[str]:
    if isinstance(node, StepNode):
        return set(node.provides)
    if isinstance(node, ParallelNode):
        return set().union(*(_provides(b) for b in node.branches))
    return set().union(*(_provides(n) for n in node.plan.nodes))
