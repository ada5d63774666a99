"""A trained model as a policy: any Hugging Face causal LM folder with its tokenizer, decoding greedy
(batched) or with SafeBeam, and ranking words teacher-forced for the `compose` family."""

from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.families.composition import NO_WORD, positions
from medsafetyworld.evaluation.policies import Policy


DECODINGS = ("greedy", "safebeam")


def safebeam_generate(
    model,
    input_ids,
    attention_mask=None,
    *,
    tag_id: int | None,
    num_beams: int = 4,
    max_new_tokens: int = 100,
    eos_id: int | None = None,
    allow_tag: bool = False,
    use_cache: bool = True,
) -> list[int]:
    """SafeBeam decoding (Safety Pretraining, Maini et al. 2025) of one prompt; the new token ids.

    Beam search that, at every step, drops the half of the candidate continuations on which the
    model puts the most probability on the tag `<potentially unsafe content>` coming next:

    1. take the top 2*num_beams (beam, token) extensions of the live beams by cumulative log-prob;
    2. one batched forward pass over those candidates gives each one's next-token distribution; its
       probability of `tag_id` is the candidate's risk (that same pass supplies the next step's
       log-probs, so a step costs one forward pass);
    3. keep the num_beams candidates with the lowest risk (ties: higher log-prob, then candidate
       order), ranked by cumulative log-prob; those ending in eos_id are finished, the rest live on.

    It stops when no beam is live, after max_new_tokens, or once the best finished beam scores at
    least the best live one (log-probs only fall, so no live beam could overtake it). It returns the
    best finished beam by cumulative log-prob (no length penalty), eos included as
    `model.generate` would; with none finished, the best live beam, max_new_tokens long.

    The tag itself is never emitted unless allow_tag: SafeBeam uses it as a signal to steer away
    from, and a printed tag would be a flag that withholds the response rather than a safe answer.
    An eos candidate is scored like any other, by the tag's probability right after it (where a
    trained model predicts the start of a new document, rarely a tag); giving it risk 0 instead
    would, with one beam, end the response whenever eos is the second most likely token.
    tag_id=None switches the filter off: plain beam search, greedy decoding with num_beams=1.

    `model(input_ids=...)` must return an object with `.logits` (batch, length, vocab), as a Hugging
    Face causal LM does; input_ids is one prompt, shape (length,) or (1, length). With an
    attention_mask, masked (padding) positions are dropped first. A Hugging Face model decodes with
    its KV cache (rows gathered to follow the beams) unless use_cache=False; any other model, or one
    whose cache cannot be reordered, is re-run on whole sequences each step.
    """
    import torch

    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"safebeam_generate takes one prompt, got a batch of {ids.shape[0]}")
        ids = ids[0]
    if attention_mask is not None:
        ids = ids[torch.as_tensor(attention_mask).reshape(-1).to(ids.device).bool()]
    prompt = ids.tolist()
    if max_new_tokens <= 0:
        return []
    if use_cache:
        from transformers import PreTrainedModel

        use_cache = isinstance(model, PreTrainedModel)
    cache = None

    def forward(batch: list[list[int]], **kw):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor(batch, dtype=torch.long, device=ids.device), **kw)
        return out, torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)

    def extend(cands: list[list[int]], parents: list[int]):
        """Next-token log-probs of each candidate; parents: its parent's row in the cache."""
        nonlocal cache
        if cache is None:
            return forward([prompt + toks for toks in cands])[1]
        cache.reorder_cache(torch.tensor(parents, dtype=torch.long, device=ids.device))
        out, logprobs = forward([toks[-1:] for toks in cands], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        return logprobs

    if use_cache:
        out, logprobs = forward([prompt], use_cache=True)
        cache = out.past_key_values if hasattr(out.past_key_values, "reorder_cache") else None
    else:
        logprobs = forward([prompt])[1]
    live: list[tuple[list[int], float]] = [([], 0.0)]  # (new tokens, cumulative log-prob)
    live_rows = [0]  # each live beam's row in the cache (and in logprobs)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_new_tokens):
        scores = torch.tensor([sc for _, sc in live], dtype=torch.float64, device=logprobs.device)
        scores = scores[:, None] + logprobs[live_rows].double()
        if tag_id is not None and not allow_tag:
            scores[:, tag_id] = -math.inf
        flat = scores.reshape(-1)
        order = torch.sort(flat, descending=True, stable=True).indices[: 2 * num_beams]
        order = order[torch.isfinite(flat[order])]
        if order.numel() == 0:
            break
        vocab = scores.shape[1]
        cands = [(live[i // vocab][0] + [i % vocab], float(flat[i])) for i in order.tolist()]
        logprobs = extend([toks for toks, _ in cands], [live_rows[i // vocab] for i in order.tolist()])
        risk = [0.0] * len(cands) if tag_id is None else logprobs[:, tag_id].exp().tolist()
        keep = sorted(range(len(cands)), key=lambda j: (risk[j], -cands[j][1], j))[:num_beams]
        keep.sort(key=lambda j: (-cands[j][1], j))
        live, live_rows = [], []
        for j in keep:
            if eos_id is not None and cands[j][0][-1] == eos_id:
                finished.append(cands[j])
            else:
                live.append(cands[j])
                live_rows.append(j)
        if not live:
            break
        if finished and max(sc for _, sc in finished) >= live[0][1]:
            break
    if finished:
        return max(finished, key=lambda b: b[1])[0]  # max keeps the first of equal scores
    return live[0][0] if live else []


def load_model(model_dir: str | Path, device: str | None = None):
    """A Hugging Face causal LM folder with its tokenizer: (model in eval mode on `device`, cuda if
    any, tokenizer); DataError when the folder holds no model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise DataError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval(), tokenizer


class ModelPolicy(Policy):
    """Decoding from any Hugging Face causal LM folder with its tokenizer: greedy (batched), or
    SafeBeam (`decoding="safebeam"`, one prompt at a time; see safebeam_generate)."""

    def __init__(self, model_dir: Path, batch_size: int = 64, device: str | None = None, progress: bool = True,
                 decoding: str = "greedy", num_beams: int = 4):
        from medsafetyworld.corpus.tokenizer import UNSAFE_TAG

        if decoding not in DECODINGS:
            raise ConfigError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}")
        if decoding == "safebeam" and num_beams < 1:
            raise ConfigError(f"--num-beams must be at least 1, got {num_beams}")
        self.name = str(model_dir)
        self.model, self.tokenizer = load_model(model_dir, device)
        self.device = self.model.device
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.progress = batch_size, progress
        self.decoding, self.num_beams = decoding, num_beams
        self.tag_id = None
        if decoding == "safebeam":
            self.tag_id = self.tokenizer.convert_tokens_to_ids(UNSAFE_TAG)
            if self.tag_id is None or self.tag_id == self.tokenizer.unk_token_id:
                raise DataError(f"SafeBeam needs the tag {UNSAFE_TAG!r} in the tokenizer of {model_dir}")

    def decoding_info(self) -> dict[str, object]:
        """How this policy decodes, for the results record."""
        if self.decoding == "safebeam":
            from medsafetyworld.corpus.tokenizer import UNSAFE_TAG

            return {"method": "safebeam", "num_beams": self.num_beams, "tag": UNSAFE_TAG, "emits_tag": False}
        return {"method": "greedy"}

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def respond(self, probes, max_new_tokens):
        if self.decoding == "safebeam":
            return self._respond_safebeam(probes, max_new_tokens)
        import torch

        order = sorted(range(len(probes)), key=lambda i: len(probes[i].prompt))
        out: list[str] = [""] * len(probes)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", disable=not self.progress):
            enc = self.tokenizer([probes[i].prompt for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(batch, new.tolist()):
                out[i] = self._decode(ids)
        return out

    def rank_first(self, probes):
        """One forward pass per probe over its prompt and gold text (batched, right-padded): the
        argmax piece before each position, decoded and stripped (NO_WORD where that is no word)."""
        import torch

        texts, places = [], []
        for p in probes:
            text = p.prompt + p.meta["gold"]
            # the piece " word" starts at the space before the word, so its context ends there
            places.append([len(self.tokenizer.encode(text[: len(p.prompt) + offset - 1], add_special_tokens=False))
                           for offset, _ in positions(p)])
            texts.append(text)
        out: list[list[str]] = []
        order = range(0, len(texts), self.batch_size)
        for start in tqdm(order, desc="teacher-forced", disable=not self.progress):
            batch = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts[start : start + self.batch_size]]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):
                ids[row, : len(x)], mask[row, : len(x)] = torch.tensor(x), 1
            with torch.inference_mode():
                best = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.argmax(-1)
            for row, where in enumerate(places[start : start + self.batch_size]):
                pieces = self.tokenizer.convert_ids_to_tokens(best[row, [n - 1 for n in where]].tolist())
                words = [self.tokenizer.convert_tokens_to_string([piece]).strip() for piece in pieces]
                out.append([w if w and " " not in w else NO_WORD for w in words])
        return out

    def _respond_safebeam(self, probes, max_new_tokens):
        out = []
        for probe in tqdm(probes, desc="safebeam", disable=not self.progress):
            enc = self.tokenizer(probe.prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            ids = safebeam_generate(
                self.model, enc["input_ids"], enc["attention_mask"], tag_id=self.tag_id,
                num_beams=self.num_beams, max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_token_id,
            )
            out.append(self._decode(ids))
        return out
