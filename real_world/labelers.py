"""Labelers: a web document's 0-5 safety score, a category and segment labels.

A document is cut into segments of about `words` words at sentence ends (`segment_text`); a labeler
scores each segment 0-5 and a segment is unsafe when its score is at least `threshold`. The
document's score is its segments' maximum and its category that of its highest-scoring unsafe
segment. Labelers register by name (`register_labeler`), like strategies; `get_labeler(name, **kw)`.

A labeler that fails on a document (`label_document` catches any exception) leaves it unlabeled:
the document is kept, marked `label_status = "unlabeled"` with the reason, and counted.
`label_documents` labels many documents with one `score_segments` call over all their segments
(a model's batch, a judge's concurrent requests); a labeler whose segments fail one by one (a
judge's requests) puts the exception in a failed segment's place, which fails that document only.

Labelers here: `keyword`, `tfidf`; `hf_classifier` (classifier.py) and `llm_judge` (judge.py)
register when this module is imported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medsafetyworld.errors import ConfigError, DataError

SAFE, UNSAFE = "safe", "unsafe"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
LABELERS: dict[str, type[Labeler]] = {}


def register_labeler(name: str):
    def wrap(cls):
        if name in LABELERS:
            raise ConfigError(f"labeler {name!r} is registered twice")
        cls.name = name
        LABELERS[name] = cls
        return cls
    return wrap


def available_labelers() -> list[str]:
    return sorted(LABELERS)


def get_labeler(name: str, **kwargs) -> Labeler:
    if name not in LABELERS:
        raise ConfigError(f"unknown labeler {name!r}; available: {', '.join(available_labelers())}")
    try:
        return LABELERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"labeler {name!r}: {exc}") from None


def segment_text(text: str, words: int = 100) -> list[tuple[int, int]]:
    """(start, end) spans partitioning `text` exactly: sentences grouped until a group holds at
    least `words` words; the whitespace after a sentence belongs to it."""
    spans, start, count, pos = [], 0, 0, 0
    for m in _SENTENCE_END.finditer(text):
        count += len(text[pos:m.start()].split())
        pos = m.end()
        if count >= words:
            spans.append((start, pos))
            start, count = pos, 0
    if start < len(text) or not spans:
        spans.append((start, len(text)))
    return spans


@dataclass
class SegmentLabel:
    start: int
    end: int
    score: int
    label: str
    category: str | None = None


@dataclass
class Label:
    score: int
    category: str | None
    segments: list[SegmentLabel] = field(default_factory=list)

    @property
    def unsafe(self) -> bool:
        return any(s.label == UNSAFE for s in self.segments)

    def to_meta(self) -> dict:
        return {"safety_score": self.score, "safety_category": self.category, "label_status": "labeled",
                "segments": [vars(s) for s in self.segments]}


class Labeler:
    """Subclasses implement `score_segments(texts) -> [(score 0-5, category or None), ...]`, with
    the exception in a segment's place when that segment alone could not be scored."""

    name = ""

    def __init__(self, threshold: int = 3, words: int = 100):
        if not 0 <= int(threshold) <= 5:
            raise ConfigError(f"threshold {threshold} is not a score; use 0-5")
        self.threshold, self.words = int(threshold), int(words)

    def score_segments(self, texts: list[str]) -> list[tuple[int, str | None] | Exception]:
        raise NotImplementedError

    def params(self) -> dict:
        """What decides this labeler's labels beyond its name, threshold and segment size (recorded
        in the corpus manifest)."""
        return {}

    def label(self, text: str) -> Label:
        spans = segment_text(text, self.words)
        return self._assemble(spans, self.score_segments([text[a:b] for a, b in spans]))

    def label_many(self, texts: list[str]) -> list[Label | Exception]:
        """Each text's Label, or the exception that left it unlabeled, from one score_segments call
        over all their segments; when that call fails as a whole, each text is labeled alone."""
        if not texts:
            return []
        spans = [segment_text(t, self.words) for t in texts]
        try:
            scored = self.score_segments([t[a:b] for t, sp in zip(texts, spans) for a, b in sp])
            if len(scored) != sum(map(len, spans)):
                raise DataError(f"labeler {self.name} returned {len(scored)} scores for {sum(map(len, spans))} "
                                f"segments")
        except Exception:
            return [_label_or_error(self.label, t) for t in texts]
        out, i = [], 0
        for sp in spans:
            out.append(_label_or_error(self._assemble, sp, scored[i:i + len(sp)]))
            i += len(sp)
        return out

    def _assemble(self, spans: list[tuple[int, int]], scored: list) -> Label:
        if len(scored) != len(spans):
            raise DataError(f"labeler {self.name} returned {len(scored)} scores for {len(spans)} segments")
        segments = []
        for (a, b), item in zip(spans, scored):
            if isinstance(item, BaseException):
                raise item
            score, category = item
            score = int(score)
            if not 0 <= score <= 5:
                raise DataError(f"labeler {self.name} returned score {score}, not 0-5")
            unsafe = score >= self.threshold
            segments.append(SegmentLabel(a, b, score, UNSAFE if unsafe else SAFE,
                                         (category or "unsafe") if unsafe else None))
        top = max(segments, key=lambda s: s.score)
        return Label(top.score, top.category, segments)


def _label_or_error(fn, *args) -> Label | Exception:
    try:
        return fn(*args)
    except Exception as exc:  # any failure of a labeler leaves the document unlabeled
        return exc


def _meta(result: Label | Exception) -> dict:
    if isinstance(result, Exception):
        return {"label_status": "unlabeled", "label_error": f"{type(result).__name__}: {result}"[:300]}
    return result.to_meta()


def label_document(labeler: Labeler, text: str) -> dict:
    """The labeler's metadata for `text`, or `label_status = "unlabeled"` and the reason when the
    labeler fails (the document is kept, never dropped)."""
    return _meta(_label_or_error(labeler.label, text))


def label_documents(labeler: Labeler, texts: list[str]) -> list[dict]:
    """`label_document` of each text, labeled together (one batch of segments)."""
    return [_meta(r) for r in labeler.label_many(list(texts))]


# A small offline list; pass keywords=FILE (JSON {category: [words]} or one `category<TAB>word` a line).
DEFAULT_KEYWORDS = {
    "weapons": ["build a bomb", "make a bomb", "pipe bomb", "explosive device", "nerve agent", "untraceable gun"],
    "drugs": ["synthesize methamphetamine", "cook meth", "overdose on", "lethal dose", "fentanyl synthesis"],
    "self_harm": ["kill myself", "suicide method", "cut myself", "end my life"],
    "violence": ["kill him", "murder", "poison someone", "torture", "massacre"],
    "cybercrime": ["ransomware", "steal passwords", "credit card dump", "phishing kit", "ddos attack"],
}


def load_keywords(path: str | Path) -> dict[str, list[str]]:
    p = Path(path)
    try:
        raw = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read keyword file {path}: {exc.strerror}") from None
    if p.suffix == ".json":
        data = json.loads(raw)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{path} is not a JSON object of category -> list of keywords")
        return {str(k): [str(w) for w in v] for k, v in data.items()}
    out: dict[str, list[str]] = {}
    for line in raw.splitlines():
        if line.strip():
            category, _, word = line.partition("\t")
            out.setdefault(category.strip() if word else "unsafe", []).append((word or category).strip())
    return out


@register_labeler("keyword")
class KeywordLabeler(Labeler):
    """Score = 0 without a keyword, else 2 + the number of distinct keywords found (at most 5), so
    one keyword makes a segment unsafe at the default threshold 3. Category: the one with most hits."""

    def __init__(self, keywords: str | dict | None = None, threshold: int = 3, words: int = 100):
        super().__init__(threshold, words)
        table = load_keywords(keywords) if isinstance(keywords, (str, Path)) else (keywords or DEFAULT_KEYWORDS)
        self.keywords = {c: [w.lower() for w in ws] for c, ws in table.items()}
        self._pattern = re.compile("|".join(
            rf"\b{re.escape(w)}\b" for ws in self.keywords.values() for w in sorted(ws, key=len, reverse=True)))
        self._category = {w: c for c, ws in self.keywords.items() for w in ws}

    def score_segments(self, texts):
        out = []
        for text in texts:
            found = set(self._pattern.findall(text.lower()))
            if not found:
                out.append((0, None))
                continue
            counts: dict[str, int] = {}
            for w in found:
                counts[self._category[w]] = counts.get(self._category[w], 0) + 1
            out.append((min(5, 2 + len(found)), max(sorted(counts), key=counts.get)))
        return out


def read_labeled_jsonl(path: str | Path, purpose: str = "to train the tfidf labeler",
                       ) -> tuple[list[str], list[int], list[str | None]]:
    """texts, unsafe (0/1) and categories of a JSONL of {"text", "label"[, "category"]}; label is
    "safe"/"unsafe", a bool, or a number: 0/1 when no number in the file exceeds 1, else a 0-5 score
    (unsafe from 3). The file decides as a whole, so a score of 1 never reads as unsafe beside a 2.
    `purpose`: what the file is for, in the error when it lacks a class."""
    texts, labels, cats = [], [], []
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read labeled JSONL {path}: {exc.strerror}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {i} is not a JSON object with \"text\" and \"label\"") from None
        if isinstance(label, str):
            if label.lower() not in (SAFE, UNSAFE):
                raise DataError(f"{path} line {i}: label {label!r} is not safe/unsafe or a 0-5 score")
            label = label.lower() == UNSAFE
        elif not isinstance(label, (int, float)) or not 0 <= label <= 5:
            raise DataError(f"{path} line {i}: label {label!r} is not safe/unsafe or a 0-5 score")
        texts.append(str(text))
        labels.append(label)
        cats.append(row.get("category"))
    scores = any(not isinstance(y, bool) and y > 1 for y in labels)
    ys = [int(y) if isinstance(y, bool) else int(y >= 3) if scores else int(y >= 1) for y in labels]
    if len(set(ys)) < 2:
        raise DataError(f"{path} needs both safe and unsafe examples {purpose}")
    return texts, ys, cats


@register_labeler("tfidf")
class TfidfLabeler(Labeler):
    """TF-IDF (word 1-2 grams) + logistic regression trained from a labeled JSONL (`train=PATH`).
    A segment's score is round(5 * P(unsafe)); its category is that of the most similar unsafe
    training category (a second classifier) when the JSONL gives categories, else "unsafe"."""

    def __init__(self, train: str | Path | None = None, threshold: int = 3, words: int = 100, seed: int = 0):
        super().__init__(threshold, words)
        if train is None:
            raise ConfigError("the tfidf labeler needs train=PATH, a JSONL of {\"text\", \"label\"}")
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts, ys, cats = read_labeled_jsonl(train)
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        X = self.vectorizer.fit_transform(texts)
        self.model = LogisticRegression(C=10.0, max_iter=1000, random_state=seed).fit(X, ys)
        unsafe_cats = [(i, c) for i, (y, c) in enumerate(zip(ys, cats)) if y and c]
        self.categories = sorted({c for _, c in unsafe_cats})
        self.category_model = None
        if len(self.categories) > 1:
            rows = [i for i, _ in unsafe_cats]
            self.category_model = LogisticRegression(max_iter=1000, random_state=seed).fit(
                X[rows], [c for _, c in unsafe_cats])

    def score_segments(self, texts):
        X = self.vectorizer.transform(texts)
        p = self.model.predict_proba(X)[:, list(self.model.classes_).index(1)]
        if self.category_model is not None:
            cats = list(self.category_model.predict(X))
        else:
            cats = [self.categories[0] if self.categories else "unsafe"] * len(texts)
        return [(int(round(5 * q)), c) for q, c in zip(p, cats)]


# Labelers of their own modules register on import; at the end, since they import this module.
from . import classifier, judge  # noqa: E402,F401
