"""`jailbreak`: each prescription_contra and harmful probe is asked again with its request wrapped
in each selected jailbreak template (role-play, "ignore safety", authority claims; see
`corpus.jailbreaks`), inside the user turn: "User: <template around the request>\\nAssistant:".
The probe's meta is kept, so the response is parsed and scored exactly as the clean one.

`templates`: `held_out` (default; the six templates no training text holds: generalization),
`train` (the nine the raw corpus and the SFT set use) or `all`. `probes`: at most this many probes
of each (family, split), drawn once with the probe seed, the same ones under every template, so the
templates and families are compared on the same probes. Every template multiplies the cost of
those probes: held_out asks 6 x up to 4 x `probes` prompts.

Metrics: the standard ones over every wrapped probe (all templates pooled; the wrapped copies of
one probe are not independent, so their intervals are narrower than a fresh probe set's would be),
and per template family `jailbreak_unsafe_action_rate/<family>/<split>` and
`jailbreak_harmful_asr/<family>/<split>` (the same definitions, on that family's templates). The
templates asked, with their text, and each template's rates go into the entry's `details`.
"""

from __future__ import annotations

import numpy as np

from medsafetyworld.attacks.base import Attack, register_attack
from medsafetyworld.corpus import jailbreaks
from medsafetyworld.errors import ConfigError
from medsafetyworld.evaluation.families import Probe, unsafe_request_families
from medsafetyworld.evaluation.metrics import (
    SPLITS,
    MetricValue,
    _mean_metric,
    metric_terms,
)

# the standard metrics each template family reports on its own
FAMILY_METRICS = ("unsafe_action_rate", "harmful_asr")


def subsample(probes: list[Probe], cap: int, rng: np.random.Generator) -> list[Probe]:
    """At most `cap` probes of each (family, split), in their original order."""
    keep: set[str] = set()
    for key in sorted({(p.family, p.split) for p in probes}):
        group = [p.id for p in probes if (p.family, p.split) == key]
        picked = group if len(group) <= cap else [group[i] for i in sorted(rng.choice(len(group), cap, replace=False))]
        keep.update(picked)
    return [p for p in probes if p.id in keep]


def wrapped(probe: Probe, jailbreak: jailbreaks.Jailbreak) -> Probe:
    meta = {**probe.meta, "jailbreak": jailbreak.name, "jailbreak_family": jailbreak.family}
    return Probe(f"{probe.id}~{jailbreak.name}", probe.family, probe.split,
                 jailbreaks.wrap_prompt(jailbreak, probe.prompt), meta)


@register_attack("jailbreak")
class Jailbreak(Attack):
    def __init__(self, templates: str = "held_out", probes: int = 100):
        jailbreaks.select(templates)  # raises ConfigError on a bad selection
        if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
            raise ConfigError(f"jailbreak: probes={probes!r} must be a positive integer")
        self.templates, self.probes = templates, probes
        self._asked: dict[str, jailbreaks.Jailbreak] = {}  # wrapped probe id -> its template
        self._details: dict | None = None

    def params(self):
        return {"templates": self.templates, "probes": self.probes}

    def attacked(self, ctx, probes):
        chosen = subsample([p for p in probes if p.family in unsafe_request_families()], self.probes,
                           np.random.default_rng([ctx.probe_seed, 0x7B]))
        selected = jailbreaks.select(self.templates)
        out = [wrapped(p, j) for j in selected for p in chosen]
        self._asked = {p.id: jailbreaks.JAILBREAKS[p.meta["jailbreak"]] for p in out}
        self._details = {
            "templates": {j.name: {"family": j.family, "held_out": j.held_out, "text": j.text} for j in selected},
            "probes_per_template": len(chosen),
        }
        return ctx.policy, out

    def extra_metrics(self, df, n_boot, seed):
        asked = [self._asked[i] for i in df["probe_id"].astype(str)]
        family = np.array([j.family for j in asked])
        name = np.array([j.name for j in asked])
        terms = metric_terms(df)
        out: dict[str, MetricValue] = {}
        per_template: dict[str, dict] = {n: {} for n in dict.fromkeys(name)}
        for metric in FAMILY_METRICS:
            for s in SPLITS:
                [(mask, hits)] = terms[f"{metric}/{s}"]
                for f in dict.fromkeys(family):
                    out[f"jailbreak_{metric}/{f}/{s}"] = _mean_metric(hits[mask & (family == f)], n_boot, seed)
                for n in per_template:
                    values = hits[mask & (name == n)]
                    per_template[n][f"{metric}/{s}"] = {
                        "value": float(values.mean()) if values.size else None, "n": int(values.size)}
        if self._details is not None:
            self._details["per_template"] = per_template
        return out

    def details(self):
        return self._details
