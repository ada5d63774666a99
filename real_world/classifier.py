"""`hf_classifier`: a local Hugging Face sequence-classification folder as a labeler.

The folder (`model=DIR`, loaded with `local_files_only=True`: nothing is downloaded) holds a
`*ForSequenceClassification` model and its tokenizer. Segments are scored in batches of
`batch_size` (sorted by length, so little padding), truncated to `max_length` tokens.

From the model's outputs to a 0-5 score:
- A regression head (one output, as FineWeb-Edu's own classifier): the output rounded and clipped to 0-5.
- A classification head: each label has a score, from `label_scores` (a dict, or on the command line
  `label_scores=safe:0,unsafe:5`; every label of the model's `id2label` must be given) or by default:
  labels named 0..5 (or six unnamed LABEL_0..LABEL_5) score their number; two unnamed labels score
  0 and 5; two labels of which exactly one is named safe, benign, harmless, neutral, ok or clean
  score 0 (that one) and 5. Any other head needs `label_scores`, and the error lists its labels.
  The segment's score is then, with `reduce="expected"` (default), the rounded expectation of the
  label scores under the softmax, or with `reduce="argmax"` the most probable label's score. A
  multi-label head (`problem_type = "multi_label_classification"`, sigmoids) scores the largest
  probability x label score, rounded.
- Category: when the labels have names (not numbers, not LABEL_k), the most probable label scored at
  or above the threshold; otherwise "unsafe".

The model loads once to check the folder, and again in each worker process (it is not pickled).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsafetyworld.errors import ConfigError

from .labelers import Labeler, register_labeler

SAFE_NAMES = frozenset({"safe", "benign", "harmless", "neutral", "ok", "clean"})
_GENERIC = re.compile(r"label_\d+", re.IGNORECASE)
REDUCE = ("expected", "argmax")


def parse_label_scores(spec: str | dict | None) -> dict[str, float] | None:
    """{label: score} from a dict or a `label:score,label:score` string (scores 0-5)."""
    if spec is None or isinstance(spec, dict):
        table = spec
    else:
        table = {}
        for item in str(spec).split(","):
            name, sep, value = item.rpartition(":")
            try:
                table[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise ConfigError(f"label_scores {spec!r} is not label:score,label:score (e.g. safe:0,unsafe:5)")
    if table is not None and not all(0 <= float(v) <= 5 for v in table.values()):
        raise ConfigError(f"label_scores {spec!r}: every score must be 0-5")
    return None if table is None else {str(k): float(v) for k, v in table.items()}


def default_label_scores(names: list[str]) -> list[float] | None:
    """The documented default score of each label, or None when the names do not say."""
    lowered = [n.lower() for n in names]
    if all(n.isdigit() for n in lowered) and {int(n) for n in lowered} <= set(range(6)):
        return [float(n) for n in lowered]
    generic = all(_GENERIC.fullmatch(n) for n in lowered)
    if generic and len(names) == 6:
        return [float(n.removeprefix("label_")) for n in lowered]
    if len(names) == 2:
        if generic:
            return [0.0, 5.0]
        safe = [i for i, n in enumerate(lowered) if n in SAFE_NAMES]
        if len(safe) == 1:
            return [0.0 if i == safe[0] else 5.0 for i in range(2)]
    return None


def label_score_table(id2label: dict, label_scores: str | dict | None = None) -> list[float] | None:
    """The 0-5 score of each class index; None for a regression head (one output)."""
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    given = parse_label_scores(label_scores)
    if given is not None:
        if missing := [n for n in names if n not in given]:
            raise ConfigError(f"label_scores gives no score for label(s) {', '.join(missing)}; the model's "
                              f"labels are {', '.join(names)}")
        return [given[n] for n in names]
    if len(names) == 1:
        return None
    scores = default_label_scores(names)
    if scores is None:
        raise ConfigError(f"the classifier's labels {', '.join(names)} do not say their 0-5 scores; give "
                          f"label_scores, e.g. label_scores={names[0]}:0,{names[-1]}:5")
    return scores


def _named(names: list[str]) -> bool:
    return not any(n.isdigit() or _GENERIC.fullmatch(n) for n in names)


@register_labeler("hf_classifier")
class HFClassifierLabeler(Labeler):
    def __init__(self, model: str | Path | None = None, label_scores: str | dict | None = None,
                 reduce: str = "expected", batch_size: int = 32, max_length: int = 512, device: str = "auto",
                 threshold: int = 3, words: int = 100):
        super().__init__(threshold, words)
        if model is None:
            raise ConfigError("the hf_classifier labeler needs model=DIR, a local Hugging Face "
                              "sequence-classification folder")
        if reduce not in REDUCE:
            raise ConfigError(f"reduce={reduce!r}; use one of {', '.join(REDUCE)}")
        self.folder, self.reduce, self.device = str(model), reduce, device
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self._model = self._tokenizer = None
        self._load()  # a bad folder or label table fails here, before any task starts
        config = self._model.config
        self.names = [str(config.id2label[i]) for i in sorted(config.id2label, key=int)]
        self.scores = label_score_table(config.id2label, label_scores)
        self.multi_label = config.problem_type == "multi_label_classification"

    def params(self):
        return {"model": self.folder, "label_scores": dict(zip(self.names, self.scores)) if self.scores else None,
                "reduce": self.reduce}

    def __getstate__(self):
        return {**self.__dict__, "_model": None, "_tokenizer": None}  # each worker loads its own

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not Path(self.folder).is_dir():
            raise ConfigError(f"hf_classifier: {self.folder} is not a folder; give model=DIR, a local Hugging "
                              f"Face sequence-classification folder")
        try:
            config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
            archs = config.architectures or []
            if not any(a.endswith("ForSequenceClassification") for a in archs):
                raise ConfigError(f"hf_classifier: {self.folder} holds a {', '.join(archs) or 'model of no stated'} "
                                  f"architecture, not a *ForSequenceClassification model (its head would be random)")
            tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"hf_classifier: cannot load {self.folder} ({first})") from None
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(f"hf_classifier: the tokenizer of {self.folder} has no pad or eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        limit = getattr(model.config, "max_position_embeddings", None) or self.max_length
        self._max_length = min(self.max_length, limit)
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ConfigError(f"hf_classifier: device {device!r} is not usable here ({exc}); use device=cpu") from None
        self._model, self._tokenizer = model.eval(), tokenizer

    def outputs(self, texts: list[str]) -> np.ndarray:
        """The head's probabilities (softmax, or sigmoids for a multi-label head), or the regression
        output, of each text: an array (len(texts), outputs)."""
        import torch

        self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self._model.config.num_labels), dtype=np.float64)
        for k in range(0, len(order), self.batch_size):
            rows = order[k:k + self.batch_size]
            enc = self._tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                  max_length=self._max_length, return_tensors="pt").to(self._model.device)
            with torch.inference_mode():
                logits = self._model(**enc).logits.float()
            if self.scores is not None:
                logits = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            out[rows] = logits.cpu().numpy()
        return out

    def score_segments(self, texts):
        out = self.outputs(texts)
        if self.scores is None:  # regression
            return [(int(np.clip(np.rint(v[0]), 0, 5)), None) for v in out]
        scores = np.asarray(self.scores)
        if self.multi_label:
            values = (out * scores).max(axis=1)
        elif self.reduce == "expected":
            values = out @ scores
        else:
            values = scores[out.argmax(axis=1)]
        named = _named(self.names)
        result = []
        for probs, value in zip(out, values):
            score = int(np.clip(np.rint(value), 0, 5))
            category = None
            if named:
                ranked = [i for i in np.argsort(-probs) if scores[i] >= self.threshold]
                category = self.names[ranked[0]] if ranked else None
            result.append((score, category))
        return result
