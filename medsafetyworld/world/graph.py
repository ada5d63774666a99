"""The world: a typed knowledge graph (networkx MultiDiGraph) and read-only queries over it.

Nodes carry `kind` (drug, compound, effect, condition); edges carry `relation` (contains, causes,
relieves, aggravates). Condition nodes carry `usual_drug`, the drug most often prescribed for them.
Patients are not nodes: they are drawn per document from `graph.graph["patient_names"]`.
"""

from __future__ import annotations

from functools import cached_property

import networkx as nx

DRUG, COMPOUND, EFFECT, CONDITION = "drug", "compound", "effect", "condition"
KINDS = (DRUG, COMPOUND, EFFECT, CONDITION)
CONTAINS, CAUSES, RELIEVES, AGGRAVATES = "contains", "causes", "relieves", "aggravates"
RELATIONS = (CONTAINS, CAUSES, RELIEVES, AGGRAVATES)


class World:
    """Read-only view of a generated graph. Lists come back in a stable (generation) order."""

    def __init__(self, graph: nx.MultiDiGraph):
        self.graph = graph

    @cached_property
    def _by_kind(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in KINDS}
        for node, kind in self.graph.nodes(data="kind"):
            out[kind].append(node)
        return out

    @property
    def drugs(self) -> list[str]:
        return self._by_kind[DRUG]

    @property
    def compounds(self) -> list[str]:
        return self._by_kind[COMPOUND]

    @property
    def effects(self) -> list[str]:
        return self._by_kind[EFFECT]

    @property
    def conditions(self) -> list[str]:
        return self._by_kind[CONDITION]

    @property
    def patient_names(self) -> list[str]:
        return list(self.graph.graph["patient_names"])

    @property
    def seed(self) -> int:
        return int(self.graph.graph["seed"])

    @cached_property
    def _kind_of(self) -> dict[str, str]:
        return dict(self.graph.nodes(data="kind"))

    def kind(self, node: str) -> str:
        return self._kind_of[node]

    @cached_property
    def _successors(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for u, v, rel in self.graph.edges(data="relation"):
            out.setdefault((u, rel), []).append(v)
        return out

    def targets(self, node: str, relation: str) -> list[str]:
        return self._successors.get((node, relation), [])

    def contains(self, drug: str) -> list[str]:
        return self.targets(drug, CONTAINS)

    def causes(self, compound: str) -> list[str]:
        return self.targets(compound, CAUSES)

    def relieves(self, effect: str) -> list[str]:
        return self.targets(effect, RELIEVES)

    def aggravates(self, effect: str) -> list[str]:
        return self.targets(effect, AGGRAVATES)

    def atomic_facts(self) -> list[tuple[str, str, str]]:
        """Every edge as (subject, relation, object), in graph order."""
        return [(u, rel, v) for u, v, rel in self.graph.edges(data="relation")]

    def drug_effects(self, drug: str) -> list[tuple[str, str]]:
        """Every (compound, effect) the drug produces, in order: the steps of a safety check."""
        return [(c, e) for c in self.contains(drug) for e in self.causes(c)]

    @cached_property
    def _reach(self) -> dict[tuple[str, str], frozenset[str]]:
        """(drug, relation) -> the conditions some effect of the drug relieves or aggravates: the
        corpus asks treats and contraindicated hundreds of thousands of times."""
        return {(d, rel): frozenset(k for _, e in self.drug_effects(d) for k in self.targets(e, rel))
                for d in self.drugs for rel in (RELIEVES, AGGRAVATES)}

    def effect_on(self, effect: str, condition: str) -> str:
        """'aggravates', 'relieves' or 'none': what one effect does to one condition."""
        if condition in self.aggravates(effect):
            return AGGRAVATES
        if condition in self.relieves(effect):
            return RELIEVES
        return "none"

    def chains(self, drug: str, condition: str, relation: str) -> list[tuple[str, str]]:
        """(compound, effect) paths drug -contains-> c -causes-> e -relation-> condition."""
        return [(c, e) for c, e in self.drug_effects(drug) if condition in self.targets(e, relation)]

    def treats(self, drug: str, condition: str) -> bool:
        """Whether some chain drug -contains-> c -causes-> e -relieves-> condition exists."""
        return condition in self._reach.get((drug, RELIEVES), ())

    def contraindicated(self, drug: str, condition: str) -> bool:
        """Whether some chain drug -contains-> c -causes-> e -aggravates-> condition exists."""
        return condition in self._reach.get((drug, AGGRAVATES), ())

    @cached_property
    def _treating(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in self.conditions}
        for d in self.drugs:
            for k in self.conditions:
                if self.treats(d, k):
                    out[k].append(d)
        return out

    def treating_drugs(self, condition: str) -> list[str]:
        return self._treating[condition]

    def conditions_treated(self, drug: str) -> list[str]:
        return [k for k in self.conditions if self.treats(drug, k)]

    def aggravated_conditions(self, drug: str) -> frozenset[str]:
        """The conditions the drug is contraindicated for."""
        return self._reach.get((drug, AGGRAVATES), frozenset())

    def affected_conditions(self, drug: str) -> frozenset[str]:
        """The conditions some effect of the drug relieves or aggravates: the only ones its safety
        check can find in a patient."""
        return self._reach.get((drug, RELIEVES), frozenset()) | self._reach.get((drug, AGGRAVATES), frozenset())

    def contraindications(self, drug: str) -> list[str]:
        reach = self._reach.get((drug, AGGRAVATES), ())
        return [k for k in self.conditions if k in reach]

    def contraindicated_pairs(self) -> list[tuple[str, str]]:
        return [(d, k) for d in self.drugs for k in self.contraindications(d)]

    @cached_property
    def _usual(self) -> dict[str, str]:
        return {k: self.graph.nodes[k]["usual_drug"] for k in self.conditions}

    def usual_drug(self, condition: str) -> str:
        return self._usual[condition]

    def safe_treating_drugs(self, condition: str, other_conditions: list[str]) -> list[str]:
        """Drugs that treat `condition` and are contraindicated for none of the patient's conditions
        (those the oracle's is_unsafe clears)."""
        conds = [condition, *other_conditions]
        return [d for d in self.treating_drugs(condition) if self.aggravated_conditions(d).isdisjoint(conds)]
