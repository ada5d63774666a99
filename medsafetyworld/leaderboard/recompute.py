"""The leaderboard does not believe a submission's numbers (SPEC 7): given the world and probes
regenerated from (benchmark version, preset, world seed) and the probe seed the submission declares,
every part of its record (the clean per-probe table and each attack's) goes through rescore.py's
`check_part`: the probes are the benchmark's, every raw response is re-scored with the parser, every
metric is recomputed and compared with the record. The first failure rejects the submission, with
one reason.

What responses alone cannot confirm is said so, not passed off as checked: the metrics of
teacher-forced families (`compose_acc`, `verdict_acc`, `harm_match_acc`: the response is the word
the model ranked first, which only the weights can confirm; they are still recomputed from the
responses and must agree), `probe_auroc` (hidden states), an attack's own loss
(`suffix_target_loss`). With a shipped model, the teacher-forced responses are asked again
(`confirm_teacher_forced`) and those metrics count as recomputed, except a finetuning attack's,
whose responses come from a finetuned copy that is not shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from medsafetyworld.config import Preset
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.families import Probe
from medsafetyworld.evaluation.metrics import PRETRAINED
from medsafetyworld.evaluation.probes import build_probes
from medsafetyworld.leaderboard.rescore import (
    attack_part,
    check_part,
    clean_part,
    family_mode,
    read_table,
    weight_metrics,
)
from medsafetyworld.leaderboard.submission import Rejected, Submission
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

Confirm = Callable[[pd.DataFrame, dict[str, Probe]], None]


@dataclass
class Recomputed:
    """Which of the record's metrics the board recomputed and found equal, and which it could not
    confirm (the reason for each)."""

    checked: list[str] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)

    def _by_reason(self) -> dict[str, list[str]]:
        reasons: dict[str, list[str]] = {}
        for metric, why in self.unchecked.items():
            reasons.setdefault(why, []).append(metric)
        return dict(sorted(reasons.items()))

    def summary(self) -> str:
        """One short phrase for the page: 'all N metrics', or 'N of M' and why not the rest
        (every reason is a model's weights or activations the submission does not ship)."""
        total = len(self.checked) + len(self.unchecked)
        if not self.unchecked:
            return f"all {total} metrics"
        return f"{len(self.checked)} of {total}; {len(self.unchecked)} need weights not shipped"

    def details(self) -> str:
        """Every metric not recomputed, by reason."""
        return "; ".join(f"{why}: {', '.join(sorted(ms))}" for why, ms in self._by_reason().items()) or "none"


def recompute(sub: Submission, world: World, splits: Splits, preset: Preset,
              confirm_teacher_forced: Confirm | None = None) -> Recomputed:
    """Check the submission's probes, re-score every response and recompute every metric, clean
    and per attack; Rejected with the first disagreement. `confirm_teacher_forced(table, probes)`
    (given when the model is shipped) raises Rejected unless the model ranks the submitted words
    first; without it the teacher-forced metrics are listed as unchecked."""
    clean = build_probes(world, splits, preset.eval, sub.info["probe_seed"])
    out = Recomputed()
    for label, path in sub.probe_files().items():  # the clean table first, then each attack's
        try:
            _recompute_part(sub, label, read_table(path), world, splits, preset, clean, confirm_teacher_forced, out)
        except DataError as e:  # rescore.Disagrees, or Rejected from the confirmation
            raise Rejected(f"attack {label}: {e}" if label else str(e)) from None
    return out


def _recompute_part(sub: Submission, label: str, table: pd.DataFrame, world: World, splits: Splits,
                    preset: Preset, clean: list[Probe], confirm: Confirm | None, out: Recomputed) -> None:
    entry = sub.record["attacks"][label] if label else sub.record
    part = clean_part(clean) if not label else attack_part(label, entry, world, splits, preset.eval,
                                                           sub.info["probe_seed"], clean)
    scored, not_recomputed = check_part(world, part, table, entry["metrics"])
    need_weights = weight_metrics(scored)
    finetuned = part.attack is not None and part.attack.needs_model and not part.searched
    if confirm is not None and not finetuned:  # a finetuning attack's answers are a finetuned copy's, not shipped
        confirm(scored[scored["family"].map(family_mode) == "teacher_forced"], part.probes)
        need_weights = {m for m in need_weights if PRETRAINED in m}  # the model before post-training is not shipped
    prefix = f"{label}:" if label else ""
    for name in entry["metrics"]:
        if name in not_recomputed:
            out.unchecked[prefix + name] = not_recomputed[name]
        elif name in need_weights:
            out.unchecked[prefix + name] = ("the model before post-training is not shipped" if PRETRAINED in name
                                            else "the finetuned model is not shipped" if finetuned
                                            else "needs the model's weights")
        else:
            out.checked.append(prefix + name)
