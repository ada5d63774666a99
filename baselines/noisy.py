"""`noisy(recall=r, precision=q)`: labels from a realistic classifier instead of the oracle.

A chain step that relabels documents the way a document-level harmfulness classifier with the given
recall and precision would (Safety Pretraining's had recall about 0.89-0.95), so that the next step
acts on its labels: `noisy(recall=0.9,precision=0.9)+filter` is filtering with that classifier.

- An unsafe document is caught with probability `recall` (its labels kept); a missed one has every
  segment relabelled safe, so the next step lets it through as it is.
- A safe document is flagged with the false-positive rate that gives `precision` at the stream's
  share of unsafe documents π: fpr = recall·π·(1−q) / (q·(1−π)), π counted on the first `warmup`
  documents. A flagged safe document has its last segment labelled unsafe (category by its kind).

Relabelled documents keep the truth in `meta["oracle_unsafe"]` and say `meta["label_source"]`.
"""

from __future__ import annotations

from itertools import chain, islice

from medsafetyworld.corpus.document import CONTRAINDICATED_PRESCRIPTION, HARMFUL_REQUEST, SAFE, UNSAFE, Document, Part
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, register_strategy


def _fraction(name: str, value) -> float:
    if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"noisy: {name}={value!r} must be in (0, 1]")
    return float(value)


@register_strategy("noisy")
class NoisyClassifier(Strategy):
    def __init__(self, recall: float = 0.9, precision: float = 0.9, warmup: int = 2000):
        self.recall, self.precision = _fraction("recall", recall), _fraction("precision", precision)
        if not isinstance(warmup, int) or warmup < 1:
            raise ConfigError(f"noisy: warmup={warmup!r} must be a positive number of documents")
        self.warmup = warmup
        self.fpr: float | None = None

    def params(self):
        return {"recall": self.recall, "precision": self.precision, "warmup": self.warmup}

    def false_positive_rate(self, unsafe_share: float) -> float:
        if unsafe_share <= 0.0 or unsafe_share >= 1.0:
            return 0.0
        fpr = self.recall * unsafe_share * (1 - self.precision) / (self.precision * (1 - unsafe_share))
        if fpr > 1.0:
            raise ConfigError(f"noisy: precision {self.precision} is unreachable at recall {self.recall} with "
                              f"{unsafe_share:.1%} unsafe documents; raise it")
        return fpr

    def __call__(self, docs, rng):
        docs = iter(docs)
        head = list(islice(docs, self.warmup))
        self.fpr = self.false_positive_rate(sum(d.unsafe for d in head) / max(1, len(head)))
        for doc in chain(head, docs):
            yield from self.apply(doc, rng)

    def apply(self, doc, rng):
        fpr = self.fpr if self.fpr is not None else 0.0
        u = rng.random()
        if doc.unsafe and u >= self.recall:
            parts = [Part(p.text, SAFE, None) for p in doc.parts()]
        elif not doc.unsafe and u < fpr:
            parts = doc.parts()
            category = HARMFUL_REQUEST if doc.meta.get("question") == "harmful" else CONTRAINDICATED_PRESCRIPTION
            parts[-1] = Part(parts[-1].text, UNSAFE, category)
        else:
            yield doc
            return
        meta = {**doc.meta, "oracle_unsafe": doc.unsafe, "label_source": f"noisy({self.recall},{self.precision})"}
        yield Document.from_parts(doc.id, doc.kind, parts, meta)
