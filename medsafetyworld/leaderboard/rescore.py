"""Recompute one part of a results record from its per-probe table: the one core of `msw
summarize`'s record checks (verify.py) and of the leaderboard's recomputation of a submission
(recompute.py).

A record has parts: its own (clean) per-probe table, and one per attack. `check_part` takes a part,
with the probes it must have asked, and stops at its first failure with one reason (Disagrees):

1. the table asks only those probes (every one of them, where the part knows its whole set), each
   once, with the benchmark's family, split and prompt;
2. every response is scored again by the rule-based scorer (evaluation.scoring.score), and every
   scored column the table holds must be what the scorer gives;
3. every metric the benchmark computes (evaluation.metrics.compute_metrics, and an attack's own,
   `Attack.extra_metrics`) is recomputed from the re-scored table and must be in the record with the
   same n and value (REL_TOL, ABS_TOL). Intervals are bootstrap draws and are not compared. A metric
   the record holds that no recomputation gives is allowed only where it is read from the model
   itself: probe_auroc (hidden states) and what an attack that searches with the model measures
   during its search (suffix_target_loss); `check_part` returns those, with why.

Which probes a part asks (`clean_part`, `attack_part`): the clean probe set; a finetuning attack asks
it too; a prompt attack (prefill, jailbreak) rewrites it, and its probes are rebuilt by the attack's
own `attacked()`; an attack that searches with the model (suffix) asks some of the clean probes,
which ones only its search knows.

What no response can show is whether the teacher-forced responses (the words the model ranked
first) are the model's: `weight_metrics` names the metrics that read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsafetyworld.config import EvalConfig, Preset
from medsafetyworld.errors import DataError, MSWError
from medsafetyworld.evaluation.families import Probe, get_family
from medsafetyworld.evaluation.metrics import PRETRAINED, MetricValue, compute_metrics, metric_terms
from medsafetyworld.evaluation.policies import reference_policy
from medsafetyworld.evaluation.scoring import COLUMN_DEFAULTS, score
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

# A recorded value is the float64 of the same computation, written to JSON and read back, which
# round-trips exactly; only a different summation order could move it, by a relative amount.
# Relative, so that metrics not bounded by 1 (suffix_target_loss) are held to the same digits; the
# absolute floor is for values of 0.
REL_TOL, ABS_TOL = 1e-9, 1e-12
COMPOSE_PRETRAINED = "compose" + PRETRAINED


class Disagrees(DataError):
    """A per-probe table (or the record's metrics) that recomputation does not reproduce; the
    message is the one reason, phrased about the part ("its per-probe table ...")."""


@dataclass
class Part:
    """One per-probe table of a record, as recomputation sees it: `label` ('' for the record's own,
    else the attack's), the probes its rows may ask by id, whether it must ask every one of them,
    and the attack whose own metrics it also carries (None for the clean table)."""

    label: str
    probes: dict[str, Probe]
    complete: bool = True
    attack: Any = None

    @property
    def searched(self) -> bool:
        """Whether the model chose the probes and measured some metrics during the attack."""
        return bool(getattr(self.attack, "searches_with_model", False))

    def fits(self, table: pd.DataFrame) -> bool:
        """Whether each row of `table` asks one of the part's probes, with its prompt (how a run
        folder's record check tells which probe seed a table was asked with)."""
        rows = zip(*(texts(table, c) for c in ("probe_id", "family", "prompt")))
        return all((p := probe_of(self.probes, i, f)) is not None and p.prompt == prompt for i, f, prompt in rows)


def clean_part(probes: Iterable[Probe]) -> Part:
    """The record's own per-probe table: every probe of the clean set."""
    return Part("", {p.id: p for p in probes})


def attack_part(label: str, entry: Mapping[str, Any], world: World, splits: Splits, eval_config: EvalConfig,
                probe_seed: int, clean: list[Probe]) -> Part:
    """The per-probe table of the attack entry `entry`, recorded under `label`; Disagrees unless the
    label builds the attack (and the parameters) the entry names. A prompt attack's probes are
    rebuilt from the clean ones `clean` as `attacked()` rewrites them for `probe_seed`."""
    from medsafetyworld.attacks import AttackContext, get_attack  # torch (seconds): only for records with attacks

    try:
        attack = get_attack(label)
    except MSWError as e:
        raise Disagrees(f"its attack cannot be built from its label ({e})") from None
    if attack.name != entry.get("attack") or attack.params() != entry.get("params"):
        raise Disagrees("its entry names another attack or other parameters than its label")
    if getattr(attack, "searches_with_model", False):
        return Part(label, {p.id: p for p in clean}, complete=False, attack=attack)
    if attack.needs_model:  # finetuning: the model changes, the probes do not
        return Part(label, {p.id: p for p in clean}, attack=attack)
    # A prompt attack only rewrites the probes: the policy it wraps and the preset are never asked.
    ctx = AttackContext(world, splits, Preset("rebuilt", eval=eval_config),
                        reference_policy("refuser", world, probe_seed), probe_seed, out_dir=None, progress=False)
    _, chosen = attack.attacked(ctx, list(clean))
    return Part(label, {p.id: p for p in chosen}, attack=attack)


# --- the table ----------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    """A per-probe file as a table, or Disagrees."""
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds on a broken file; all mean the same here
        raise Disagrees(f"its per-probe file {path} cannot be read as a table ({type(e).__name__}: "
                        f"{str(e)[:120]})") from None


def texts(table: pd.DataFrame, name: str) -> list[str]:
    """A column as text, missing values as ''; Disagrees when the table has no such column."""
    if name not in table.columns:
        raise Disagrees(f"its per-probe table has no `{name}` column")
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in table[name]]


def probe_of(probes: Mapping[str, Probe], probe_id: str, family: str) -> Probe | None:
    """The probe a row asks: a compose_pretrained row asks the compose probe of its id without
    `_pretrained` (of the model before post-training), any other row the probe of its id, with its
    family; None when there is none."""
    pretrained = family == COMPOSE_PRETRAINED
    probe = probes.get(probe_id.removesuffix(PRETRAINED) if pretrained else probe_id)
    asked = "compose" if pretrained else family
    return probe if probe is not None and probe.family == asked else None


def _objects(column: pd.Series) -> np.ndarray:
    """A column as a numpy object array of plain values, missing ones as None, for == across dtypes."""
    values = column.astype(object).to_numpy(copy=True)
    values[column.isna().to_numpy()] = None
    return values


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def rescore(world: World, probes: Mapping[str, Probe], table: pd.DataFrame, *,
            check_prompts: bool = True) -> pd.DataFrame:
    """`table` scored again from its raw responses: each row must ask one of `probes` (probe_of)
    with its split (and, with `check_prompts`, its prompt), each probe once, and every scored column
    the table holds (COLUMN_DEFAULTS) must be what the scorer gives. Disagrees at the first failure."""
    ids, families, splits = texts(table, "probe_id"), texts(table, "family"), texts(table, "split")
    prompts, responses = texts(table, "prompt"), texts(table, "response")
    if len(set(ids)) != len(ids):
        twice = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise Disagrees(f"its per-probe table lists probe {twice!r} twice")
    if not ids:
        raise Disagrees("its per-probe table has no rows")
    rows = []
    for pid, family, split, prompt, response in zip(ids, families, splits, prompts, responses):
        probe = probe_of(probes, pid, family)
        if probe is None or probe.split != split:
            raise Disagrees(f"its per-probe table asks probe {pid!r} ({family}, {split}), which is not one of "
                            "the benchmark's probes")
        if check_prompts and prompt != probe.prompt:
            raise Disagrees(f"the prompt of probe {pid!r} in its per-probe table is not the benchmark's")
        rows.append({**score(world, probe, response), "probe_id": pid, "family": family, "prompt": prompt})
    scored = pd.DataFrame(rows, columns=list(rows[0]), index=table.index)
    columns = [c for c in COLUMN_DEFAULTS if c in table.columns]
    wrong = {c: _objects(table[c]) != _objects(scored[c]) for c in columns}
    differs = np.logical_or.reduce(list(wrong.values())) if wrong else np.zeros(len(table), dtype=bool)
    if differs.any():
        i = int(differs.nonzero()[0][0])
        c = next(c for c in columns if wrong[c][i])
        raise Disagrees(f"{int(differs.sum())} of {len(table)} rows of its per-probe table are not scored as the "
                        f"scorer scores their responses (first: {ids[i]}: {c} is {_plain(table[c].iloc[i])!r}, the "
                        f"scorer gives {_plain(scored[c].iloc[i])!r})")
    return scored


# --- the metrics --------------------------------------------------------------------------------


def recompute_metrics(table: pd.DataFrame, attack: Any = None) -> dict[str, MetricValue]:
    """Every benchmark metric of `table`, and `attack`'s own (extra_metrics) when given; intervals
    from one resample (they are not compared). Disagrees for a table of the wrong shape or types."""
    try:
        computed = compute_metrics(table, n_boot=1, seed=0)
        if attack is not None:
            computed.update(attack.extra_metrics(table, 1, 0))
    except (MSWError, KeyError, TypeError, ValueError) as e:
        raise Disagrees(f"its per-probe table gives no metrics ({type(e).__name__}: {e})") from None
    return computed


def _same(recorded: Any, value: float) -> bool:
    if recorded is None:
        return math.isnan(value)
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        return False
    if math.isnan(value) or math.isnan(recorded):
        return math.isnan(value) and math.isnan(recorded)
    return math.isclose(recorded, value, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _shown(x: Any) -> str:
    return "null" if x is None else f"{x:.4g}" if isinstance(x, float) else repr(x)


def disagreeing_metrics(recorded: Mapping[str, Any], computed: Mapping[str, MetricValue]) -> list[str]:
    """Each metric of `computed` that `recorded` (a record's or attack entry's `metrics`) lacks or
    holds with another value or n, as `name (record V n=N, table V n=N)`, in `computed`'s order."""
    out = []
    for name, mine in computed.items():
        if name not in recorded:
            out.append(f"{name} (not in the record, table {_shown(mine.value)} n={mine.n})")
            continue
        metric = recorded[name]
        value, n = (metric.get("value"), metric.get("n")) if isinstance(metric, Mapping) else (metric, None)
        if n != mine.n or not _same(value, mine.value):
            out.append(f"{name} (record {_shown(value)} n={n}, table {_shown(mine.value)} n={mine.n})")
    return out


def compare_metrics(recorded: Any, computed: Mapping[str, MetricValue]) -> None:
    """Disagrees unless `recorded` holds every metric of `computed` with its value and n."""
    if not isinstance(recorded, Mapping):
        raise Disagrees("its metrics are not an object")
    if wrong := disagreeing_metrics(recorded, computed):
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise Disagrees(f"{len(wrong)} metric(s) disagree with its per-probe table: {shown}")


def _not_recomputed(recorded: Mapping[str, Any], computed: Mapping[str, MetricValue], part: Part) -> dict[str, str]:
    """The metrics `recorded` holds that no recomputation gives, with why; Disagrees for one that
    nothing in this benchmark version writes there."""
    out = {}
    for name in recorded:
        if name in computed:
            continue
        if not part.label and name.startswith("probe_auroc"):
            out[name] = "read from hidden states"
        elif part.searched:
            out[name] = "read from the model during the attack"
        else:
            raise Disagrees(f"it holds metric {name!r}, which this benchmark version does not compute")
    return out


def check_part(world: World, part: Part, table: pd.DataFrame, recorded: Any) -> tuple[pd.DataFrame, dict[str, str]]:
    """Steps 1-3 of the module docstring on one part: `table` its per-probe table, `recorded` the
    metrics the record (or attack entry) holds for it. Disagrees at the first failure; else the
    re-scored table and the recorded metrics no recomputation gives (name -> why)."""
    if not isinstance(recorded, Mapping):
        raise Disagrees("its metrics are not an object")
    if part.complete and (missing := sorted(set(part.probes) - set(texts(table, "probe_id")))):
        raise Disagrees(f"its per-probe table lacks {len(missing)} of its {len(part.probes)} probes "
                        f"(e.g. {missing[0]})")
    scored = rescore(world, part.probes, table)
    computed = recompute_metrics(scored, None if part.searched else part.attack)
    compare_metrics(recorded, computed)
    return scored, _not_recomputed(recorded, computed, part)


# --- what only the weights can confirm -----------------------------------------------------------


def family_mode(family: str) -> str:
    """How a family's probes are asked (evaluation/families: complete, generate, continue,
    teacher_forced); '' for a family the benchmark does not have (compose_pretrained)."""
    try:
        return get_family(family).mode
    except MSWError:
        return ""


def weight_metrics(table: pd.DataFrame) -> set[str]:
    """The metrics that read rows whose responses only the weights can confirm: those of
    teacher-forced families, and the rows of the model before post-training."""
    family = table["family"].astype(str).to_numpy()
    forced = np.array([f == COMPOSE_PRETRAINED or family_mode(f) == "teacher_forced" for f in family], dtype=bool)
    return {name for name, terms in metric_terms(table).items()
            if any((np.asarray(w, dtype=float) > 0)[forced].any() for w, _ in terms)}
