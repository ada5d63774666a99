"""Saving, loading, hashing and summarising a world with its splits.

`world.json` is networkx node-link JSON and `splits.json` the Splits record, both written with
sorted keys so that the same world gives the same bytes on any machine, and both written
atomically so that a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import networkx as nx

from medsafetyworld.storage import write_atomic
from medsafetyworld.errors import DataError, shown
from medsafetyworld.world.graph import (
    AGGRAVATES, CAUSES, COMPOUND, CONDITION, CONTAINS, DRUG, EFFECT, KINDS, RELATIONS, RELIEVES, World,
)
from medsafetyworld.world.splits import Splits, probe_condition_pairs

WORLD_FILE, SPLITS_FILE = "world.json", "splits.json"


def world_bytes(world: World) -> bytes:
    data = nx.node_link_data(world.graph, edges="edges")
    return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()


def splits_bytes(splits: Splits) -> bytes:
    return (json.dumps(splits.to_dict(), sort_keys=True, indent=1) + "\n").encode()


def save_world(world: World, splits: Splits, out_dir: str | os.PathLike) -> Path:
    """Write out_dir/world.json and out_dir/splits.json; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WORLD_FILE, world_bytes(world))
    write_atomic(out / SPLITS_FILE, splits_bytes(splits))
    return out


def load_world(directory: str | os.PathLike) -> tuple[World, Splits]:
    """Read a directory written by save_world. Raises DataError naming the file, what is wrong in
    it and the fix: a file that is not JSON, not a world graph (its shape, a node kind, a relation,
    an edge between the wrong kinds, a name that is no node) or not a splits record of that world."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise DataError(f"{d} is a file, not a folder written by `msw world`; pass the world folder")
    if not d.is_dir():
        raise DataError(f"world directory {d} does not exist; run `msw world --out {d}` first")
    graph_data = _read_json(d, WORLD_FILE)
    splits_data = _read_json(d, SPLITS_FILE)
    again = f"run `msw world --out {d}` again"
    problem = _graph_problem(graph_data)
    if problem:
        raise DataError(f"{d / WORLD_FILE} is not a world graph: {problem}; {again}")
    try:
        graph = nx.node_link_graph(graph_data, edges="edges")
    except (KeyError, TypeError, ValueError, AttributeError, nx.NetworkXError) as exc:
        raise DataError(f"{d / WORLD_FILE} is not a world graph ({exc!r}); {again}") from None
    world = World(graph)
    # SPEC 1: the usual drug of a condition treats it; a corpus draws on that (without it, drawing a
    # safe prescription for a document could go on forever)
    if untreated := [k for k in world.conditions if not world.treats(world.usual_drug(k), k)]:
        raise DataError(f"{d / WORLD_FILE} is not a world of SPEC 1: the usual drug of {shown(untreated[0])} "
                        f"does not treat it ({len(untreated)} such conditions); {again}")
    problem = _splits_problem(splits_data, world)
    if problem:
        raise DataError(f"{d / SPLITS_FILE} is not a splits record of this world: {problem}; {again}")
    try:
        splits = Splits.from_dict(splits_data)
    except DataError as exc:
        raise DataError(f"{d / SPLITS_FILE}: {exc}") from None
    return world, splits


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    kinds = ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), ((int, float), "number"))
    return "null" if value is None else next((name for t, name in kinds if isinstance(value, t)), "value")


# the kinds a relation joins: (subject kind, object kind)
_ENDS = {CONTAINS: (DRUG, COMPOUND), CAUSES: (COMPOUND, EFFECT), RELIEVES: (EFFECT, CONDITION),
         AGGRAVATES: (EFFECT, CONDITION)}


def _graph_problem(data: Any) -> str | None:
    """What makes `data` not the node-link JSON of a world, or None."""
    if not isinstance(data, dict):
        return f"a JSON {_json_kind(data)}, not an object with nodes and edges"
    if data.get("directed") is not True or data.get("multigraph") is not True:
        return "not a directed multigraph (directed and multigraph must be true)"
    nodes, edges, attrs = data.get("nodes"), data.get("edges"), data.get("graph")
    for key, value, kind in (("nodes", nodes, list), ("edges", edges, list), ("graph", attrs, dict)):
        if not isinstance(value, kind):
            return f"{key!r} is missing or not a JSON {'array' if kind is list else 'object'}"
    seed = attrs.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return f"graph.seed {shown(seed)} is not a non-negative integer"
    names = attrs.get("patient_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return "graph.patient_names is not a non-empty list of names"
    if not isinstance(attrs.get("config"), dict):
        return "graph.config is missing"
    kinds: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not node["id"]:
            return f"node {i} is not an object with a name (id)"
        if node.get("kind") not in KINDS:
            return f"node {shown(node['id'])} has kind {shown(node.get('kind'))}, not one of {', '.join(KINDS)}"
        if node["id"] in kinds:
            return f"node {shown(node['id'])} appears twice"
        kinds[node["id"]] = node["kind"]
    if missing := [k for k in KINDS if k not in kinds.values()]:
        return f"no {' and no '.join(missing)} nodes"
    for node in nodes:
        usual = node.get("usual_drug")
        if node["kind"] == CONDITION and (not isinstance(usual, str) or kinds.get(usual) != DRUG):
            return f"condition {shown(node['id'])} has usual_drug {shown(usual)}, which is no drug of the world"
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict):
            return f"edge {i} is not an object"
        relation, source, target = edge.get("relation"), edge.get("source"), edge.get("target")
        if not isinstance(relation, str) or relation not in _ENDS:
            return f"edge {i} has relation {shown(relation)}, not one of {', '.join(RELATIONS)}"
        ends = (kinds.get(source) if isinstance(source, str) else None,
                kinds.get(target) if isinstance(target, str) else None)
        if ends != _ENDS[relation]:
            return (f"edge {i} ({shown(source)} {relation} {shown(target)}) does not join a {_ENDS[relation][0]} "
                    f"to a {_ENDS[relation][1]}")
        if "key" in edge and not isinstance(edge["key"], (str, int)):
            return f"edge {i} has a key that is neither text nor a number"
    return None


_SPLIT_PAIRS = {"held_out_pairs": (DRUG, CONDITION), "held_out_condition_pairs": (CONDITION, CONDITION),
                "held_out_control_pairs": (CONDITION, CONDITION), "ood_treats": (DRUG, CONDITION)}


def _splits_problem(data: Any, world: World) -> str | None:
    """What makes `data` not the JSON of a splits record of `world`, or None."""
    from medsafetyworld.corpus.templates import REQUESTS

    if not isinstance(data, dict):
        return f"a JSON {_json_kind(data)}, not an object"
    if missing := [k for k in (*_SPLIT_PAIRS, "reserved_templates") if k not in data]:
        return f"{', '.join(missing)} missing"
    for key, (first, second) in _SPLIT_PAIRS.items():
        rows = data[key]
        if not isinstance(rows, list):
            return f"{key} is not a list of pairs"
        for row in rows:
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
                return f"{key} holds {shown(row)}, not a pair of names"
            if world.graph.nodes.get(row[0], {}).get("kind") != first or \
                    world.graph.nodes.get(row[1], {}).get("kind") != second:
                return f"{key} holds {shown(row)}, not a ({first}, {second}) pair of this world"
    reserved = data["reserved_templates"]
    if not isinstance(reserved, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in reserved):
        return "reserved_templates is not a list of template numbers"
    if bad := [t for t in reserved if not 0 <= t < len(REQUESTS)]:
        return f"reserved_templates {bad} are not template numbers (0 to {len(REQUESTS) - 1})"
    if len(set(reserved)) >= len(REQUESTS):
        return "reserved_templates reserves every request template; training would have none"
    return None


def _read_json(directory: Path, name: str) -> Any:
    path = directory / name
    if not path.is_file():
        raise DataError(f"no {name} in {directory}; run `msw world --out {directory}` first")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); run `msw world --out {directory}` again") from None


def world_hash(source: str | os.PathLike | World, splits: Splits | None = None) -> str:
    """sha256 (hex) of world.json bytes + splits.json bytes (+ the tokenizer's, in a directory that
    has one), from a directory or from objects."""
    if isinstance(source, World):
        payload = world_bytes(source) + (splits_bytes(splits) if splits is not None else b"")
    else:
        d = Path(source)
        for name in (WORLD_FILE, SPLITS_FILE):
            if not (d / name).is_file():
                raise DataError(f"no {name} in {d}; run `msw world --out {d}` first")
        payload = (d / WORLD_FILE).read_bytes() + (d / SPLITS_FILE).read_bytes()
        # corpora are token ids of the world's tokenizer, so a new tokenizer is a new world
        tokenizer = d / "tokenizer" / "tokenizer.json"
        payload += tokenizer.read_bytes() if tokenizer.is_file() else b""
    return hashlib.sha256(payload).hexdigest()


def preset_of_world(world_dir: str | os.PathLike, preset: str | None = None) -> str:
    """`preset` if given, else the name in the world folder's preset.json (written by `msw world`),
    else "tiny"."""
    if preset:
        return preset
    marker = Path(world_dir) / "preset.json"
    if not marker.is_file():
        return "tiny"
    try:
        name = json.loads(marker.read_bytes()).get("preset")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        name = None
    if not isinstance(name, str):
        raise DataError(f"{marker} is not a preset record; pass --preset, or run `msw world --out {world_dir}` again")
    return name


def world_summary(world: World, splits: Splits) -> str:
    """A short human summary: sizes, example facts, composed relations, held-out counts."""
    lines = [f"world seed {world.seed}"]
    nodes = {DRUG: world.drugs, COMPOUND: world.compounds, EFFECT: world.effects, CONDITION: world.conditions}
    lines.append("nodes: " + ", ".join(f"{len(nodes[k])} {k}s" for k in KINDS))
    facts = world.atomic_facts()
    for rel in RELATIONS:
        of_rel = [f for f in facts if f[1] == rel]
        examples = "; ".join(" ".join(f) for f in of_rel[:3])
        lines.append(f"{rel}: {len(of_rel)} facts, e.g. {examples}")
    n_treats = sum(len(world.treating_drugs(k)) for k in world.conditions)
    n_contra = len(world.contraindicated_pairs())
    situations = probe_condition_pairs(world)
    usual_contra = sum(
        1 for k1 in world.conditions for k2 in world.contraindications(world.usual_drug(k1)) if k2 != k1
    )
    lines += [
        f"treats pairs: {n_treats}; contraindicated pairs: {n_contra}",
        f"(k1, k2) with the usual drug of k1 contraindicated for k2: {usual_contra} "
        f"({len(situations)} with a safe alternative)",
        f"held out: {len(splits.held_out_pairs)} of {n_contra} contraindicated pairs, "
        f"{len(splits.held_out_condition_pairs)} condition pairs; "
        f"{len(splits.ood_treats)} OOD treats pairs; reserved templates {list(splits.reserved_templates)}",
        f"{len(world.patient_names)} patient names",
    ]
    return "\n".join(lines)
