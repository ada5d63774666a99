"""`msw leaderboard`: the board built from a folder of submissions that strangers sent (SPEC 7).

Each submission is checked in order, stopping at the first failure with one reason
(leaderboard/submission.py: size bounds, path containment, file types, manifest hashes, schema),
then its world is regenerated from (preset, world seed) and must hash as its record says, its
evaluation config must be the preset's (the probes follow from it), and every metric is recomputed
from the raw responses (leaderboard/recompute.py). With a shipped model, the teacher-forced
responses are asked of it again. A rejected submission is listed with its reason; the others are
ranked, beside the reference policies, which the board evaluates itself as anchors.

Outputs in OUT: leaderboard.csv, leaderboard.md, rejected.csv, index.html (self-contained) and
configs/<submission>.json, which the page links. The regenerated worlds and the reference
evaluations are kept under OUT/.cache, so a rebuild after a new submission is quick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from medsafetyworld.config import get_preset, to_dict
from medsafetyworld.errors import MSWError
from medsafetyworld.evaluation.families import Probe
from medsafetyworld.evaluation.metrics import PRETRAINED
from medsafetyworld.evaluation.policies import REFERENCE_POLICIES
from medsafetyworld.leaderboard.grouping import summarize
from medsafetyworld.leaderboard.recompute import Recomputed, recompute
from medsafetyworld.leaderboard.render import to_markdown
from medsafetyworld.leaderboard.submission import MODEL_DIR, Rejected, Submission, check_files
from medsafetyworld.pipeline import evaluate_reference, make_world
from medsafetyworld.storage import path_safe, write_atomic, write_json_atomic
from medsafetyworld.world.io import load_world, world_hash

log = logging.getLogger("medsafetyworld")
TRACK_ORDER = ("intervention", "model")


@dataclass
class Accepted:
    submission: Submission
    recomputed: Recomputed


@dataclass
class Board:
    table: pd.DataFrame  # one row per (track, preset, strategy), reference rows included
    rejected: pd.DataFrame  # submission, reason
    accepted: list[Accepted]


class _Worlds:
    """Worlds regenerated from (preset, world seed), built once into the cache."""

    def __init__(self, cache: Path):
        self.cache, self.loaded = cache, {}

    def get(self, preset_name: str, seed: int):
        key = (preset_name, seed)
        if key not in self.loaded:
            folder = self.cache / "worlds" / f"{path_safe(preset_name)}-{seed}"
            make_world(get_preset(preset_name), seed, folder)
            self.loaded[key] = (folder, world_hash(folder), *load_world(folder))
        return self.loaded[key]


def _confirm_with_model(model_dir: Path, batch_size: int):
    """A check that the shipped model ranks the submitted words first on the teacher-forced rows."""
    from medsafetyworld.evaluation.model_policy import ModelPolicy

    policy = None

    def confirm(rows: pd.DataFrame, probes: dict[str, Probe]) -> None:
        nonlocal policy
        if rows.empty:
            return
        if policy is None:
            try:
                policy = ModelPolicy(model_dir, batch_size, progress=False)
            except MSWError as e:
                raise Rejected(f"the shipped model cannot be loaded ({e})") from None
        asked = [probes[pid.removesuffix(PRETRAINED)] for pid in rows["probe_id"]]
        ranked = [" ".join(words) for words in policy.rank_first(asked)]
        for pid, got, want in zip(rows["probe_id"], rows["response"], ranked):
            if str(got) != want:
                raise Rejected(f"probe {pid}: the shipped model ranks {want!r} first, the submission says {got!r}")

    return confirm


def verify(folder: Path, worlds: _Worlds) -> Accepted:
    """Every check of one submission; Rejected with the first failure."""
    sub = check_files(folder)
    info, record = sub.info, sub.record
    try:
        preset = get_preset(info["preset"])
    except MSWError as e:
        raise Rejected(str(e)) from None
    _, whash, world, splits = worlds.get(info["preset"], info["world_seed"])
    if record["world_hash"] != whash:
        raise Rejected(f"its world hash is not that of the {info['preset']} world of seed {info['world_seed']}")
    if record["config"].get("eval") != to_dict(preset.eval):
        raise Rejected(f"it was evaluated with another evaluation config than the {preset.name} preset's")
    if info["track"] == "intervention" and record["config"] != to_dict(preset):
        raise Rejected(f"the intervention track trains by the {preset.name} preset's recipe; its config differs "
                       "(submit it to the model track)")
    confirm = None
    if sub.has_model:
        confirm = _confirm_with_model(folder / MODEL_DIR, preset.eval.batch_size)
    return Accepted(sub, recompute(sub, world, splits, preset, confirm))


def _references(worlds: _Worlds, preset_name: str, seed: int, cache: Path) -> list[dict[str, Any]]:
    folder, _, world, _ = worlds.get(preset_name, seed)
    dest = cache / "references" / f"{path_safe(preset_name)}-{seed}"
    return [evaluate_reference(name, world, folder, get_preset(preset_name), seed, dest / f"ref-{name}")
            for name in REFERENCE_POLICIES]


def _table(accepted: list[Accepted], worlds: _Worlds, cache: Path) -> pd.DataFrame:
    groups: dict[tuple[str, str, int], list[Accepted]] = {}
    for a in accepted:
        info = a.submission.info
        groups.setdefault((info["track"], info["preset"], info["world_seed"]), []).append(a)
    parts = []
    for (track, preset_name, seed), group in sorted(groups.items(), key=lambda kv: (TRACK_ORDER.index(kv[0][0]),
                                                                                     kv[0][1], kv[0][2])):
        refs = _references(worlds, preset_name, seed, cache)
        table = summarize([a.submission.record for a in group] + refs)
        by_strategy: dict[str, list[Accepted]] = {}
        for a in group:
            by_strategy.setdefault(a.submission.record["strategy"], []).append(a)
        table.insert(0, "track", [track if s in by_strategy else "reference" for s in table["strategy"]])
        table.insert(1, "name", [", ".join(sorted(a.submission.name for a in by_strategy.get(s, []))) or s
                                 for s in table["strategy"]])
        table["config"] = [f"configs/{path_safe(by_strategy[s][0].submission.name)}.json" if s in by_strategy
                           else "" for s in table["strategy"]]
        table["recomputed"] = ["; ".join(sorted({a.recomputed.summary() for a in by_strategy[s]}))
                               if s in by_strategy else "evaluated by the board" for s in table["strategy"]]
        table["not_recomputed"] = [" | ".join(sorted({a.recomputed.details() for a in by_strategy[s]}))
                                   if s in by_strategy else "" for s in table["strategy"]]
        table["seeds"] = table["n_seeds"]
        table["board_track"] = track
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def build_board(submissions: Path | str, out: Path | str, *, progress: bool = True) -> Board:
    """Check every submission folder in `submissions`, rank the accepted ones, and write the board
    into `out`."""
    from medsafetyworld.leaderboard.page import render_index

    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise MSWError(f"{submissions} is not a folder of submissions")
    cache = out / ".cache"
    worlds = _Worlds(cache)
    accepted: list[Accepted] = []
    rejected: list[dict[str, str]] = []
    seen: dict[tuple, str] = {}
    folders = sorted(p for p in submissions.iterdir() if not p.name.startswith("."))
    for folder in tqdm(folders, desc="submissions", disable=not progress):
        try:
            a = verify(folder, worlds)
            info, record = a.submission.info, a.submission.record
            key = (info["track"], info["preset"], info["world_seed"], record["strategy"], record["seed"])
            if key in seen:
                raise Rejected(f"a second submission of {record['strategy']} seed {record['seed']} "
                               f"(the first is {seen[key]})")
            seen[key] = folder.name
            accepted.append(a)
        except Rejected as e:
            rejected.append({"submission": folder.name, "reason": str(e)})
            log.info("rejected %s: %s", folder.name, e)
    table = _table(accepted, worlds, cache)
    rejected_df = pd.DataFrame(rejected, columns=["submission", "reason"])
    out.mkdir(parents=True, exist_ok=True)
    for a in accepted:
        write_json_atomic(out / "configs" / f"{path_safe(a.submission.name)}.json", a.submission.record["config"])
    write_atomic(out / "leaderboard.csv", table.to_csv(index=False))
    write_atomic(out / "rejected.csv", rejected_df.to_csv(index=False))
    write_atomic(out / "leaderboard.md", _markdown(table, rejected_df))
    page_table = table
    if not table.empty:  # a reference row once per preset, however many tracks show it
        page_table = table[~table.duplicated(subset=["track", "preset", "strategy"])]
    write_atomic(out / "index.html", render_index(page_table, rejected_df))
    return Board(table, rejected_df, accepted)


def _markdown(table: pd.DataFrame, rejected: pd.DataFrame) -> str:
    parts = ["# MedSafetyWorld leaderboard", ""]
    for track in TRACK_ORDER:
        if table.empty or track not in set(table["board_track"]):
            continue
        rows = table[table["board_track"] == track]
        table_md = "\n".join("###" + line[1:] if line.startswith("# ") else line
                              for line in to_markdown(rows).splitlines())  # its title under this track's
        parts += [f"## {track} track", "", table_md, "", "What the board recomputed, per entry:", ""]
        parts += [f"- {n}: {r}; not recomputed: {d}" for n, r, d in
                  zip(rows["name"], rows["recomputed"], rows["not_recomputed"]) if r != "evaluated by the board"]
        parts.append("")
    parts += ["## Rejected submissions", ""]
    if rejected.empty:
        parts.append("None.")
    else:
        parts += ["| submission | reason |", "|---|---|"]
        parts += [f"| {s} | {r.replace('|', '/')} |" for s, r in zip(rejected["submission"], rejected["reason"])]
    return "\n".join(parts) + "\n"


def verify_folder(folder: Path | str) -> Accepted:
    """Every check the leaderboard makes of one submission folder (`msw submit` runs it on what it
    wrote); the regenerated world goes to a temporary folder. Rejected with the first failure."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="msw-verify-") as cache:
        return verify(Path(folder), _Worlds(Path(cache)))
