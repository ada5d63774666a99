"""The seeded world generator (SPEC 1).

A random draft draws every atomic relation within its per-node range, covering every target where
the ranges allow. A deterministic repair loop then adds edges, still within the per-node maxima,
until the guarantees hold: every condition has enough treating drugs, every drug treats something,
and unsafe choices are common (the contraindicated share). If a draft cannot be repaired, another
is drawn from a derived seed stream; if none can, the config is impossible and a ConfigError says
which field to change.

Determinism: one numpy Generator per stream, seeded from (seed, stream, attempt); lists only, never
iteration over a set; ties broken by a drawn priority, so the same seed and config give the same
graph on any machine.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from medsafetyworld.config import WorldConfig, to_dict
from medsafetyworld.errors import ConfigError
from medsafetyworld.world.graph import (
    AGGRAVATES, CAUSES, COMPOUND, CONDITION, CONTAINS, DRUG, EFFECT, RELATIONS, RELIEVES, World,
)
from medsafetyworld.world.names import make_names

MAX_ATTEMPTS = 8
_NAMES_STREAM, _EDGES_STREAM = 0, 1


def generate_world(config: WorldConfig, seed: int) -> World:
    """Build the world for (config, seed). Raises ConfigError if the config cannot meet SPEC 1."""
    check_world_config(config)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    names = _draw_names(np.random.default_rng([seed, _NAMES_STREAM]), config)
    problem = ""
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, _EDGES_STREAM, attempt])
        draft = _Draft.draw(rng, names, config)
        problem = draft.repair(rng)
        if not problem:
            usual = _choose_usual_drugs(rng, draft)
            return World(_build_graph(draft, usual, names["patient"], config, seed))
    raise ConfigError(f"no world meets SPEC 1 after {MAX_ATTEMPTS} draws: {problem}")


def check_world_config(config: WorldConfig) -> None:
    """Reject configs that are malformed or can never meet the guarantees, naming the field."""
    count_fields = ("n_drugs", "n_compounds", "n_effects", "n_conditions", "n_patient_names")
    counts = {f: getattr(config, f) for f in count_fields}
    for field_name, value in counts.items():
        if value < 1:
            raise ConfigError(f"WorldConfig.{field_name} must be at least 1, got {value}")
    n_targets = {
        "contains_per_drug": config.n_compounds,
        "causes_per_compound": config.n_effects,
        "relieves_per_effect": config.n_conditions,
        "aggravates_per_effect": config.n_conditions,
        "conditions_per_patient": config.n_conditions,
    }
    for field_name, limit in n_targets.items():
        lo, hi = getattr(config, field_name)
        if not 1 <= lo <= hi <= limit:
            raise ConfigError(f"WorldConfig.{field_name}={(lo, hi)} must satisfy 1 <= low <= high <= {limit}")
    if config.relieves_per_effect[0] + config.aggravates_per_effect[0] > config.n_conditions:
        raise ConfigError(
            "an effect never relieves and aggravates the same condition, so relieves_per_effect[0] + "
            "aggravates_per_effect[0] must be at most n_conditions"
        )
    if not 1 <= config.min_treating_drugs <= config.n_drugs:
        raise ConfigError(f"WorldConfig.min_treating_drugs={config.min_treating_drugs} must be in 1..n_drugs")
    for field_name in ("min_contraindicated_share", "held_out_fraction", "ood_treats_fraction"):
        value = getattr(config, field_name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"WorldConfig.{field_name}={value} must be in [0, 1]")
    _check_share_reachable(config)


def _check_share_reachable(config: WorldConfig) -> None:
    # A drug reaches at most contains*causes*aggravates conditions, whatever the repair adds.
    if config.n_conditions < 2:
        return
    reach = config.contains_per_drug[1] * config.causes_per_compound[1] * config.aggravates_per_effect[1]
    bound = min(reach, config.n_conditions - 1) / (config.n_conditions - 1)
    if bound < config.min_contraindicated_share:
        raise ConfigError(
            f"WorldConfig.min_contraindicated_share={config.min_contraindicated_share:.3f} is impossible: a drug "
            f"is contraindicated for at most {reach} of {config.n_conditions} conditions "
            f"(contains_per_drug[1] * causes_per_compound[1] * aggravates_per_effect[1]), a share of at most "
            f"{bound:.3f}; raise aggravates_per_effect, lower n_conditions, or lower min_contraindicated_share"
        )


def _draw_names(rng: np.random.Generator, config: WorldConfig) -> dict[str, list[str]]:
    taken: set[str] = set()
    sizes = {
        DRUG: config.n_drugs, COMPOUND: config.n_compounds, EFFECT: config.n_effects,
        CONDITION: config.n_conditions, "patient": config.n_patient_names,
    }
    return {kind: make_names(rng, n, taken, kind) for kind, n in sizes.items()}


def _link(
    rng: np.random.Generator,
    sources: list[str],
    targets: list[str],
    bounds: tuple[int, int],
    forbidden: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Give each source lo..hi distinct targets, covering every target when the slots allow it."""
    lo, hi = bounds
    forbidden = forbidden or {}
    caps = [min(hi, len(targets) - len(forbidden.get(s, []))) for s in sources]
    degrees = [min(int(d), cap) for d, cap in zip(rng.integers(lo, hi + 1, size=len(sources)), caps)]
    for i in rng.permutation(len(sources)):  # top up slots until they can cover every target
        if sum(degrees) >= len(targets):
            break
        degrees[i] = caps[i]
    slots = [sources[i] for i in rng.permutation(np.repeat(np.arange(len(sources)), degrees))]
    out: dict[str, list[str]] = {s: [] for s in sources}

    def allowed(s: str, t: str) -> bool:
        return t not in out[s] and t not in forbidden.get(s, [])

    for t in (targets[i] for i in rng.permutation(len(targets))):
        j = next((j for j, s in enumerate(slots) if allowed(s, t)), None)
        if j is not None:
            out[slots.pop(j)].append(t)
    for s in slots:
        options = [t for t in targets if allowed(s, t)]
        if options:
            out[s].append(options[int(rng.integers(len(options)))])
    return out


class _Draft:
    """The edges being built (ordered lists, for the output) and, as boolean matrices, the
    relations they imply. Integer matrix products only, so every machine computes the same."""

    def __init__(self, names: dict[str, list[str]], links: dict[str, dict[str, list[str]]], config: WorldConfig):
        self.drugs, self.compounds = names[DRUG], names[COMPOUND]
        self.effects, self.conditions = names[EFFECT], names[CONDITION]
        self.names, self.config = names, config
        self.links: dict[str, dict[str, list[str]]] = {}
        self.index = {kind: {n: i for i, n in enumerate(names[kind])} for kind in (DRUG, COMPOUND, EFFECT, CONDITION)}
        self.matrix = {rel: np.zeros((len(names[a]), len(names[b])), dtype=bool) for rel, (a, b) in _ENDS.items()}
        for rel, (src, dst) in _ENDS.items():
            self.links[rel] = {s: [] for s in names[src]}
            for s_name, targets in links[rel].items():
                for t_name in targets:
                    self.links[rel][s_name].append(t_name)
                    self.matrix[rel][self.index[src][s_name], self.index[dst][t_name]] = True
        self._recompute()

    @classmethod
    def draw(cls, rng: np.random.Generator, names: dict[str, list[str]], config: WorldConfig) -> _Draft:
        links = {
            CONTAINS: _link(rng, names[DRUG], names[COMPOUND], config.contains_per_drug),
            CAUSES: _link(rng, names[COMPOUND], names[EFFECT], config.causes_per_compound),
        }
        links[RELIEVES] = _link(rng, names[EFFECT], names[CONDITION], config.relieves_per_effect)
        links[AGGRAVATES] = _link(
            rng, names[EFFECT], names[CONDITION], config.aggravates_per_effect, forbidden=links[RELIEVES]
        )
        return cls(names, links, config)

    def _recompute(self) -> None:
        m = self.matrix
        self.produces = _compose(m[CONTAINS], m[CAUSES])  # drug x effect
        self.treated = _compose(self.produces, m[RELIEVES])  # drug x condition
        self.contra = _compose(self.produces, m[AGGRAVATES])  # drug x condition

    def add(self, relation: str, i: int, j: int) -> None:
        src, dst = _ENDS[relation]
        self.links[relation][self.names[src][i]].append(self.names[dst][j])
        self.matrix[relation][i, j] = True
        self._recompute()

    def room(self, relation: str) -> np.ndarray:
        hi = {
            CONTAINS: self.config.contains_per_drug, CAUSES: self.config.causes_per_compound,
            RELIEVES: self.config.relieves_per_effect, AGGRAVATES: self.config.aggravates_per_effect,
        }[relation][1]
        return self.matrix[relation].sum(axis=1) < hi

    def treating(self, j: int) -> list[int]:
        return np.flatnonzero(self.treated[:, j]).tolist()

    def share_terms(self) -> tuple[int, int]:
        """(contraindicated triples, all triples) over (d, k1, k2) with treats(d, k1), k2 != k1."""
        num, n_treated = _triples(self.treated, self.contra)
        return int(num.sum()), int(n_treated.sum()) * (len(self.conditions) - 1)

    def share(self) -> float:
        num, den = self.share_terms()
        return num / den if den else 0.0

    # --- repair -------------------------------------------------------------------------------

    def repair(self, rng: np.random.Generator) -> str:
        """Add edges until the guarantees hold; return what is still wrong ('' when nothing)."""
        self.priority = {rel: rng.random(m.shape) for rel, m in self.matrix.items()}
        for j, k in enumerate(self.conditions):
            while len(self.treating(j)) < self.config.min_treating_drugs:
                if not self._add_treating_edge(j):
                    return (f"condition {k} has {len(self.treating(j))} treating drugs, fewer than "
                            f"min_treating_drugs={self.config.min_treating_drugs}; raise n_drugs or the "
                            f"relieves_per_effect / causes_per_compound maxima")
        idle = np.flatnonzero(~self.treated.any(axis=1))
        if idle.size:
            return f"drug {self.drugs[idle[0]]} treats no condition; raise relieves_per_effect[0]"
        while self.share() < self.config.min_contraindicated_share:
            if not self._add_contraindication_edge():
                return (f"only {self.share():.3f} of (drug, treated, other condition) triples are contraindicated, "
                        f"below min_contraindicated_share={self.config.min_contraindicated_share:.3f}; raise "
                        f"aggravates_per_effect or lower n_conditions")
        return ""

    def _add_treating_edge(self, j: int) -> bool:
        m = self.matrix
        missing = ~self.treated[:, j]
        relievers = m[RELIEVES][:, j]
        options = [  # a new relieves, causes or contains edge, each scored by drugs gained
            (RELIEVES, _count(self.produces.T, missing)[:, None] * _column(j, len(self.conditions)),
             self.room(RELIEVES)[:, None] & ~m[RELIEVES] & ~m[AGGRAVATES]),
            (CAUSES, _count(m[CONTAINS].T, missing)[:, None] * relievers[None, :],
             self.room(CAUSES)[:, None] & ~m[CAUSES]),
            (CONTAINS, (missing[:, None] & _compose(m[CAUSES], relievers[:, None]).T).astype(np.int64),
             self.room(CONTAINS)[:, None] & ~m[CONTAINS]),
        ]
        for relation, gain, valid in options:
            best = _best(gain, valid, self.priority[relation])
            if best is not None:
                self.add(relation, *best)
                return True
        return False

    def _add_contraindication_edge(self) -> bool:
        m = self.matrix
        n_treated = self.treated.sum(axis=1)
        # Adding aggravates(e, k) adds |treated(d)| - [d treats k] triples for each drug d with e
        # not yet contraindicated for k.
        per_drug = np.where(self.contra, 0, n_treated[:, None] - self.treated)
        gain = self.produces.T.astype(np.int64) @ per_drug
        valid = self.room(AGGRAVATES)[:, None] & ~m[RELIEVES] & ~m[AGGRAVATES]
        best = _best(gain, valid, self.priority[AGGRAVATES])
        if best is not None:
            self.add(AGGRAVATES, *best)
            return True
        # Every effect aggravates its maximum: give compounds or drugs more effects instead.
        return self._add_effect_edge()

    def _add_effect_edge(self) -> bool:
        m = self.matrix
        num, den = self.share_terms()
        n_other = len(self.conditions) - 1
        base_num, base_treated = _triples(self.treated, self.contra)
        # drug x effect: triples gained if the drug also produced the effect
        d_num, d_treated = _triples(
            self.treated[:, None, :] | m[RELIEVES][None], self.contra[:, None, :] | m[AGGRAVATES][None]
        )
        causes_num = m[CONTAINS].T.astype(np.int64) @ (d_num - base_num[:, None])
        causes_den = m[CONTAINS].T.astype(np.int64) @ (d_treated - base_treated[:, None]) * n_other
        compound_relieves = _compose(m[CAUSES], m[RELIEVES])
        compound_aggravates = _compose(m[CAUSES], m[AGGRAVATES])
        c_num, c_treated = _triples(
            self.treated[:, None, :] | compound_relieves[None], self.contra[:, None, :] | compound_aggravates[None]
        )
        contains_num = c_num - base_num[:, None]
        contains_den = (c_treated - base_treated[:, None]) * n_other
        share = num / den if den else 0.0
        picks = []
        for relation, dn, dd in ((CAUSES, causes_num, causes_den), (CONTAINS, contains_num, contains_den)):
            total = den + dd
            new_share = np.divide(num + dn, total, out=np.zeros(total.shape), where=total > 0)
            valid = self.room(relation)[:, None] & ~m[relation]
            best = _best(new_share - share, valid, self.priority[relation])
            if best is not None:
                picks.append((new_share[best], self.priority[relation][best], relation, best))
        if not picks:
            return False
        _, _, relation, best = max(picks)
        self.add(relation, *best)
        return True


_ENDS = {
    CONTAINS: (DRUG, COMPOUND), CAUSES: (COMPOUND, EFFECT),
    RELIEVES: (EFFECT, CONDITION), AGGRAVATES: (EFFECT, CONDITION),
}


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean relation product: (a;b)[i, k] iff some j with a[i, j] and b[j, k]."""
    return (a.astype(np.int64) @ b.astype(np.int64)) > 0


def _count(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ mask.astype(np.int64)


def _column(j: int, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    out[j] = 1
    return out[None, :]


def _triples(treated: np.ndarray, contra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per drug (over the last axis, conditions): contraindicated (k1, k2) triples, and |treated|."""
    n_treated = treated.sum(axis=-1)
    return n_treated * contra.sum(axis=-1) - (treated & contra).sum(axis=-1), n_treated


def _best(gain: np.ndarray, valid: np.ndarray, priority: np.ndarray) -> tuple[int, int] | None:
    """The valid cell with the largest positive gain, ties broken by the drawn priority."""
    mask = valid & (gain > 0)
    if not mask.any():
        return None
    cells = np.argwhere(mask)
    order = np.lexsort((priority[mask], gain[mask]))
    i, j = cells[order[-1]]
    return int(i), int(j)


def _choose_usual_drugs(rng: np.random.Generator, draft: _Draft) -> dict[str, str]:
    """Per condition, the treating drug contraindicated for the most other conditions that still
    have a safe alternative treatment; a drug already usual elsewhere counts for less."""
    priority = rng.random(len(draft.drugs))
    uses = np.zeros(len(draft.drugs), dtype=np.int64)
    usual: dict[str, str] = {}
    n_treating = draft.treated.sum(axis=0)
    for j in sorted(range(len(draft.conditions)), key=lambda j: (int(n_treating[j]), j)):
        treating = draft.treated[:, j]
        clean = treating & ~draft.contra[:, j]
        candidates = clean if clean.any() else treating
        safe_for = (clean[:, None] & ~draft.contra).sum(axis=0) > 0  # some clean drug is safe with k2
        situations = draft.contra & safe_for[None, :]
        situations[:, j] = False
        score = situations.sum(axis=1) // (1 + uses)
        idx = np.flatnonzero(candidates)
        best = int(idx[np.lexsort((priority[idx], score[idx]))[-1]])
        usual[draft.conditions[j]] = draft.drugs[best]
        uses[best] += 1
    return usual


def _build_graph(
    draft: _Draft, usual: dict[str, str], patient_names: list[str], config: WorldConfig, seed: int
) -> nx.MultiDiGraph:
    graph = nx.MultiDiGraph(seed=seed, config=to_dict(config), patient_names=list(patient_names))
    for kind, nodes in ((DRUG, draft.drugs), (COMPOUND, draft.compounds), (EFFECT, draft.effects)):
        graph.add_nodes_from(nodes, kind=kind)
    for k in draft.conditions:
        graph.add_node(k, kind=CONDITION, usual_drug=usual[k])
    for relation in RELATIONS:
        for source, targets in draft.links[relation].items():
            for target in targets:
                graph.add_edge(source, target, key=relation, relation=relation)
    return graph
