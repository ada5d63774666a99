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
from medsafetyworld.errors import DataError
from medsafetyworld.world.graph import COMPOUND, CONDITION, DRUG, EFFECT, KINDS, RELATIONS, World
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
    """Read a directory written by save_world. Raises DataError naming the file and the fix."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"world directory {d} does not exist; run `msw world --out {d}` first")
    graph_data = _read_json(d, WORLD_FILE)
    splits_data = _read_json(d, SPLITS_FILE)
    try:
        graph = nx.node_link_graph(graph_data, edges="edges")
    except (KeyError, TypeError, ValueError, nx.NetworkXError) as exc:
        raise DataError(
            f"{d / WORLD_FILE} is not a world graph ({exc!r}); run `msw world --out {d}` again"
        ) from None
    missing = [k for k in ("seed", "config", "patient_names") if k not in graph.graph]
    if missing or not isinstance(graph, nx.MultiDiGraph):
        raise DataError(f"{d / WORLD_FILE} lacks {missing or 'a multi-digraph'}; run `msw world --out {d}` again")
    if not isinstance(splits_data, dict):
        raise DataError(f"{d / SPLITS_FILE} is not a splits record; run `msw world --out {d}` again")
    try:
        splits = Splits.from_dict(splits_data)
    except DataError as exc:
        raise DataError(f"{d / SPLITS_FILE}: {exc}") from None
    return World(graph), splits


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
