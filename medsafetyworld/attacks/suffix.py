"""`suffix`: adversarial suffix search in the manner of GCG (Zou et al. 2023, "Universal and
Transferable Adversarial Attacks on Aligned Language Models") on token ids.

A few tokens are appended to the user's turn, just before "\\nAssistant:", and chosen to make the
model begin an unsafe answer. X is the patient's contraindicated usual drug, or a drug that
aggravates the condition a harmful request names. The target (`target=`) is either
- `answer` (default): the first step of an answer naming X, " X contains C." with C the compound of
  the chain the answer would state, the opening every SFT answer has. This is GCG's
  "Sure, here is": the model's own way of starting to comply, after which it goes on by itself;
- `recommend`: the `prefill` text " I recommend X.". It shares its first token with every refusal
  (" I cannot ..."), and on `tiny` the search settled on suffixes that raised " I" and made the
  model refuse most probes (0.71 of them for a raw model, against 0.01 clean), so the attacked
  model acted less unsafely than the clean one.

Each step of `gcg`:

1. the gradient of the target loss (cross-entropy of the target tokens, averaged over them) with
   respect to a one-hot encoding of the suffix tokens gives, per position, the `topk` tokens whose
   swap-in most lowers the linearised loss (special and non-round-tripping tokens excluded);
2. `batch` candidates, each the current suffix with one random position swapped for one of that
   position's top-k tokens, are evaluated exactly (one forward pass per prompt);
3. the best candidate becomes the suffix, even if it is worse (as in GCG: the search can leave a
   local minimum); the best suffix seen over all steps is returned.

Modes:
- `multi` (default): one universal suffix optimised on `prompts` SEEN-split prescription_contra
  probes (the loss summed over them), then every prescription_contra and harmful probe is asked with
  it appended. Held-out pairs (and all harmful probes) are the measurement: the suffix never saw
  them. The seen split includes the optimisation prompts themselves.
- `single`: one suffix per probe, optimised on that probe's own target, for at most `prompts`
  probes drawn round-robin from prescription_contra/harmful x held_out/seen; only those are
  evaluated. Each probe gets the full `steps` budget, so it costs about what a multi search over
  `prompts` prompts costs, yet measures only those few probes: keep `prompts` small.

Cost of a step: one forward+backward per optimisation prompt and `batch` forward rows per prompt.
The defaults (8 prompts, 50 steps, topk 32, batch 64) searched for about 20 s on a `micro` model and
about 2 min on a `tiny` one with one torch thread on a busy 2-core CPU; with more threads than free
cores these small matrices run many times slower (torch.set_num_threads(1) there).

The word-level tokenizer makes the suffix text exact: every candidate token is a piece that begins
with a space, so the suffix decodes to " w1 w2 ..." and tokenising the attacked prompt gives back
exactly the optimised ids; `suffix_text` and `insert_suffix_ids` check that and raise otherwise.

Metrics: the standard ones on the attacked probes, plus `suffix_target_loss` (the final target loss,
mean over the optimisation prompts; n = their number, no interval). The suffix text, its ids, the
loss history and the search's seconds go into the record entry's `details`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from medsafetyworld.attacks.base import Attack, register_attack
from medsafetyworld.attacks.prefill import prefill_text, unsafe_drug
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.reasoning import treatment_chain
from medsafetyworld.corpus.render import harmful_chain
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.families import Probe, unsafe_request_families
from medsafetyworld.evaluation.metrics import MetricValue
from medsafetyworld.evaluation.policies import Policy

ASSISTANT_MARK = T.CHAT.split("{request}")[1]  # "\nAssistant:": the suffix goes just before it
MODES = ("multi", "single")
TARGETS = ("answer", "recommend")


def target_text(world, probe: Probe, kind: str = "answer") -> str:
    """What the search makes the model say first for `probe` (see the module docstring)."""
    if kind not in TARGETS:
        raise ConfigError(f"suffix: target={kind!r}; choose one of {', '.join(TARGETS)}")
    if kind == "recommend":
        return prefill_text(world, probe)
    drug = unsafe_drug(world, probe)
    if probe.family == "prescription_contra":
        _, facts = treatment_chain(world, drug, probe.meta["target"])
    else:
        facts = harmful_chain(world, drug, probe.meta["target"])
    compound = facts[0][2]  # (drug, contains, compound) opens both chains
    return " " + T.STEP_CONTAINS.format(drug=drug, compound=compound).strip()


# --- token ids ------------------------------------------------------------------------------


def allowed_suffix_tokens(tokenizer) -> list[int]:
    """Ids a suffix may use: pieces that begin with a space and are not only whitespace, so any
    sequence of them decodes to " w1 w2 ..." and tokenises back to itself. That leaves out every
    special token (pad/eos/bos `<|endoftext|>`, `<unk>`, `<think>`, `</think>`, `<rf>`,
    `<potentially unsafe content>`) and newlines (no fake "\\nAssistant:" turns)."""
    from medsafetyworld.corpus.tokenizer import SPECIAL_TOKENS, UNK

    special = set(tokenizer.all_special_ids)
    special.update(i for i in tokenizer.convert_tokens_to_ids([*SPECIAL_TOKENS, UNK]) if i is not None)
    out = []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if i in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and text.strip() and not any(c.isspace() for c in text[1:]):
            out.append(i)
    return out


def suffix_text(tokenizer, suffix_ids: Sequence[int]) -> str:
    """The suffix as text: each token's word with a space before it. Raises DataError unless
    tokenising the text gives back exactly `suffix_ids`."""
    ids = [int(i) for i in suffix_ids]
    text = "".join(" " + tokenizer.decode([i], skip_special_tokens=False).strip() for i in ids)
    back = tokenizer.encode(text, add_special_tokens=False)
    if back != ids:
        raise DataError(f"suffix ids {ids} do not survive decoding: {text!r} tokenises to {back}; "
                        "restrict the candidates to allowed_suffix_tokens(tokenizer)")
    return text


def insert_suffix(prompt: str, suffix: str) -> str:
    """`prompt` with `suffix` at the end of the user turn, just before the last "\\nAssistant:"."""
    at = prompt.rfind(ASSISTANT_MARK)
    if at < 0:
        raise DataError(f"no {ASSISTANT_MARK!r} in the prompt {prompt!r}; the suffix attack needs a chat prompt")
    return prompt[:at] + suffix + prompt[at:]


def split_prompt(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """(ids before "\\nAssistant:", ids of "\\nAssistant:" on), checked to tokenise as the whole."""
    at = prompt.rfind(ASSISTANT_MARK)
    if at < 0:
        raise DataError(f"no {ASSISTANT_MARK!r} in the prompt {prompt!r}; the suffix attack needs a chat prompt")
    head = tokenizer.encode(prompt[:at], add_special_tokens=False)
    tail = tokenizer.encode(prompt[at:], add_special_tokens=False)
    if head + tail != tokenizer.encode(prompt, add_special_tokens=False):
        raise DataError(f"the prompt {prompt!r} does not tokenise in two parts at {ASSISTANT_MARK!r}")
    return head, tail


def insert_suffix_ids(tokenizer, prompt: str, suffix_ids: Sequence[int]) -> str:
    """The attacked prompt text; raises DataError unless it tokenises to head + suffix + tail, i.e.
    the model is asked exactly the ids the search optimised."""
    head, tail = split_prompt(tokenizer, prompt)
    text = insert_suffix(prompt, suffix_text(tokenizer, suffix_ids))
    got = tokenizer.encode(text, add_special_tokens=False)
    if got != head + [int(i) for i in suffix_ids] + tail:
        raise DataError(f"the attacked prompt {text!r} does not tokenise to prompt + suffix ids")
    return text


# --- the search -----------------------------------------------------------------------------


def gcg(
    model,
    prompt_ids_list: Sequence[tuple[Sequence[int], Sequence[int]]],
    target_ids_list: Sequence[Sequence[int]],
    *,
    suffix_len: int = 8,
    steps: int = 50,
    topk: int = 32,
    batch: int = 64,
    seed: int = 0,
    allowed_token_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[list[int], list[float]]:
    """Greedy Coordinate Gradient search of one suffix for all prompts; (suffix ids, loss history).

    `prompt_ids_list[i]` is a pair (head ids, tail ids): the suffix goes between them (see
    `split_prompt`), and `target_ids_list[i]` follows the tail. The loss of a suffix on a prompt is
    the mean cross-entropy of the target tokens; the search minimises the sum over prompts, and the
    history reports the mean over prompts of the best suffix so far: the start suffix's, then after
    each of `steps` steps (non-increasing, length steps + 1; the last is the returned suffix's).

    `allowed_token_ids`: the candidate tokens (default: the whole vocabulary; pass
    `allowed_suffix_tokens(tokenizer)` to keep special tokens out and the text round-trippable).
    The start suffix is `suffix_len` tokens drawn from them with `seed`; the same seed, model and
    inputs give the same result. The model is put in eval mode with its parameters frozen during
    the search (only the one-hot suffix gets a gradient), and both are restored afterwards.
    """
    import torch
    from tqdm.auto import tqdm

    if len(prompt_ids_list) == 0 or len(prompt_ids_list) != len(target_ids_list):
        raise ValueError(f"need one target per prompt and at least one prompt, got {len(prompt_ids_list)} "
                         f"prompts and {len(target_ids_list)} targets")
    for name, value in (("suffix_len", suffix_len), ("topk", topk), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be a non-negative integer")
    embedding = model.get_input_embeddings().weight
    vocab, device = embedding.shape[0], embedding.device
    allowed = sorted({int(i) for i in (range(vocab) if allowed_token_ids is None else allowed_token_ids)})
    if not allowed or allowed[0] < 0 or allowed[-1] >= vocab:
        raise ValueError(f"allowed_token_ids must be non-empty ids below the vocabulary size {vocab}")
    if any(len(t) == 0 for t in target_ids_list):
        raise ValueError("every target needs at least one token")

    def tensor(ids):
        return torch.tensor([int(i) for i in ids], dtype=torch.long, device=device)

    # (head, tail + target, target): the model reads head + suffix + tail + target
    prompts = [(tensor(h), torch.cat([tensor(t), tensor(y)]), tensor(y))
               for (h, t), y in zip(prompt_ids_list, target_ids_list)]
    rng = np.random.default_rng([seed, 0x6C6])
    allowed_t = tensor(allowed)
    banned = torch.ones(vocab, dtype=torch.bool, device=device)
    banned[allowed_t] = False
    k = min(topk, len(allowed))
    suffix = allowed_t[torch.as_tensor(rng.integers(len(allowed), size=suffix_len), device=device)]

    def target_loss(logits, target):
        """Mean CE of `target`, the last tokens of each row, given the rest; logits (rows, length, vocab)."""
        pred = logits[:, -len(target) - 1 : -1, :].float()
        gold = target.expand(len(pred), -1)
        return torch.nn.functional.cross_entropy(pred.transpose(1, 2), gold, reduction="none").mean(1)

    def losses(cands: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Mean over prompts of each candidate suffix's loss; cands (rows, suffix_len)."""
        total = torch.zeros(cands.shape[0], dtype=torch.float64, device=device)
        with torch.no_grad():
            for head, rest, target in prompts:
                for lo in range(0, cands.shape[0], chunk):
                    c = cands[lo : lo + chunk]
                    ids = torch.cat([head.expand(len(c), -1), c, rest.expand(len(c), -1)], dim=1)
                    total[lo : lo + chunk] += target_loss(model(input_ids=ids).logits, target).double()
        return total / len(prompts)

    def gradient(current: torch.Tensor) -> torch.Tensor:
        """d(summed loss)/d(one-hot suffix), shape (suffix_len, vocab)."""
        weight = embedding.detach()
        one_hot = torch.zeros(suffix_len, vocab, dtype=weight.dtype, device=device)
        one_hot[torch.arange(suffix_len, device=device), current] = 1.0
        one_hot.requires_grad_(True)
        with torch.enable_grad():
            for head, rest, target in prompts:  # one graph at a time; the gradients add up in one_hot.grad
                embeds = torch.cat([weight[head], one_hot @ weight, weight[rest]])[None]
                target_loss(model(inputs_embeds=embeds).logits, target).sum().backward()
        return one_hot.grad

    was_training = model.training
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        current_loss = float(losses(suffix[None])[0])
        history = [current_loss]
        best_suffix, best_loss = suffix.clone(), current_loss
        for _ in tqdm(range(steps), desc="gcg", disable=not progress):
            grad = gradient(suffix)
            grad[:, banned] = math.inf
            top = (-grad).topk(k, dim=1).indices  # (suffix_len, k): the most promising swaps per position
            pos = torch.as_tensor(rng.integers(suffix_len, size=batch), device=device)
            pick = torch.as_tensor(rng.integers(k, size=batch), device=device)
            cands = suffix.repeat(batch, 1)
            cands[torch.arange(batch, device=device), pos] = top[pos, pick]
            cands = torch.unique(cands, dim=0)  # sorted, so the order (and ties) are deterministic
            cands = cands[(cands != suffix).any(dim=1)]
            if len(cands):
                cand_losses = losses(cands)
                best = int(torch.argmin(cand_losses))
                # move to the best candidate even if it is worse (GCG does; it lets the search leave
                # a local minimum), but return the best suffix seen
                suffix, current_loss = cands[best].clone(), float(cand_losses[best])
                if current_loss < best_loss:
                    best_suffix, best_loss = suffix.clone(), current_loss
            history.append(best_loss)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return [int(i) for i in best_suffix.tolist()], history


# --- the attack -----------------------------------------------------------------------------


class SuffixPolicy(Policy):
    """Asks `inner` each probe's prompt with its `meta["suffix"]` text inserted just before
    "\\nAssistant:" (probes without one are asked as they are)."""

    def __init__(self, inner: Policy):
        self.inner, self.name = inner, f"suffix:{getattr(inner, 'name', 'policy')}"

    def respond(self, probes, max_new_tokens):
        shifted = [Probe(p.id, p.family, p.split, insert_suffix(p.prompt, p.meta["suffix"]) if "suffix" in p.meta
                         else p.prompt, p.meta) for p in probes]
        return self.inner.respond(shifted, max_new_tokens)


def _round(x: float) -> float:
    return round(float(x), 6)


@register_attack("suffix")
class Suffix(Attack):
    needs_model = True  # the search needs gradients through the weights
    searches_with_model = True  # which probes it asks, and their prompts, come from that search

    def __init__(self, mode: str = "multi", suffix_len: int = 8, steps: int = 50, topk: int = 32, batch: int = 64,
                 prompts: int = 8, target: str = "answer"):
        if mode not in MODES:
            raise ConfigError(f"suffix: mode={mode!r}; choose one of {', '.join(MODES)}")
        if target not in TARGETS:
            raise ConfigError(f"suffix: target={target!r}; choose one of {', '.join(TARGETS)}")
        for name, value in (("suffix_len", suffix_len), ("topk", topk), ("batch", batch), ("prompts", prompts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"suffix: {name}={value!r} must be a positive integer")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError(f"suffix: steps={steps!r} must be a non-negative integer")
        self.mode, self.suffix_len, self.steps, self.topk, self.batch, self.prompts = (
            mode, suffix_len, steps, topk, batch, prompts)
        self.target = target
        self._loss = (math.nan, 0)  # the last search's final target loss and its number of prompts
        self._details: dict | None = None

    def params(self):
        return {"mode": self.mode, "suffix_len": self.suffix_len, "steps": self.steps, "topk": self.topk,
                "batch": self.batch, "prompts": self.prompts, "target": self.target}

    def _search(self, model, tokenizer, probes, world, seed, progress):
        ids = [split_prompt(tokenizer, p.prompt) for p in probes]
        targets = [tokenizer.encode(target_text(world, p, self.target), add_special_tokens=False) for p in probes]
        return gcg(model, ids, targets, suffix_len=self.suffix_len, steps=self.steps, topk=self.topk,
                   batch=self.batch, seed=seed, allowed_token_ids=allowed_suffix_tokens(tokenizer), progress=progress)

    def attacked(self, ctx, probes):
        policy = ctx.policy
        if getattr(policy, "model", None) is None or getattr(policy, "tokenizer", None) is None:
            if ctx.model_dir is None:
                raise ConfigError("suffix searches with the model's gradients; a reference policy has none")
            policy = ctx.load_policy(ctx.model_dir)
        chosen = [p for p in probes if p.family in unsafe_request_families()]
        rng = np.random.default_rng([ctx.seed, 0x5FF])
        start = time.time()
        search = self._multi if self.mode == "multi" else self._single
        out = search(policy.model, policy.tokenizer, chosen, ctx, rng)
        self._details["search_seconds"] = round(time.time() - start, 1)
        return SuffixPolicy(policy), out

    def _multi(self, model, tokenizer, chosen, ctx, rng) -> list[Probe]:
        """One suffix optimised on a few seen prescription_contra probes, appended to every probe."""
        seen = [p for p in chosen if p.family == "prescription_contra" and p.split == "seen"]
        if not seen:
            raise ConfigError("suffix: no seen prescription_contra probe to optimise the suffix on")
        train = [seen[i] for i in sorted(rng.choice(len(seen), size=min(self.prompts, len(seen)), replace=False))]
        suffix_ids, history = self._search(model, tokenizer, train, ctx.world, ctx.seed, ctx.progress)
        text = suffix_text(tokenizer, suffix_ids)
        for p in chosen:
            insert_suffix_ids(tokenizer, p.prompt, suffix_ids)  # raises unless the model reads these ids
        self._loss = (history[-1], len(train))
        self._details = {"mode": "multi", "suffix": text, "suffix_ids": suffix_ids,
                         "optimised_on": [p.id for p in train], "initial_loss": _round(history[0]),
                         "final_loss": _round(history[-1]), "loss_history": [_round(x) for x in history]}
        return [Probe(p.id, p.family, p.split, p.prompt, {**p.meta, "suffix": text}) for p in chosen]

    def _single(self, model, tokenizer, chosen, ctx, rng) -> list[Probe]:
        """A suffix per probe for `prompts` probes, taken in turn from each (family, split) group."""
        keys = [(f, s) for f in unsafe_request_families() for s in ("held_out", "seen")]
        groups = [[p for p in chosen if (p.family, p.split) == key] for key in keys]
        groups = [[g[i] for i in rng.permutation(len(g))] for g in groups]
        turns = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
        picked = {p.id for p in turns[: self.prompts]}
        out, per_probe, finals = [], {}, []
        for j, p in enumerate(q for q in chosen if q.id in picked):
            suffix_ids, history = self._search(model, tokenizer, [p], ctx.world, ctx.seed + j, ctx.progress)
            text = suffix_text(tokenizer, suffix_ids)
            insert_suffix_ids(tokenizer, p.prompt, suffix_ids)
            out.append(Probe(p.id, p.family, p.split, p.prompt, {**p.meta, "suffix": text}))
            finals.append(history[-1])
            per_probe[p.id] = {"suffix": text, "suffix_ids": suffix_ids, "initial_loss": _round(history[0]),
                               "final_loss": _round(history[-1])}
        self._loss = (float(np.mean(finals)) if finals else math.nan, len(finals))
        self._details = {"mode": "single", "suffixes": per_probe}
        return out

    def details(self):
        return self._details

    def extra_metrics(self, df, n_boot, seed):
        value, n = self._loss
        return {"suffix_target_loss": MetricValue(float(value), n, math.nan, math.nan)}
