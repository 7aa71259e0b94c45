"""One decoder LM, two heads: EOS-pooled embeddings and yes/no relevance scores.

**Inputs.** Texts are put into their templates (queries get the task instruction, documents the
document template, pairs the reranking template) and tokenized *as one string*, so the model
sees the tokenization it was pretrained on (tokenizing template pieces separately would give,
e.g., ``"Query: "`` + ``"what"`` instead of ``"Query:"`` + ``" what"``). Only the filled-in text
is truncated, never the template: an over-long input is cut at a token boundary of the text
(from the fast tokenizer's offsets) and re-tokenized. A BOS token is prepended when the
tokenizer adds one by itself; embedding inputs end with the EOS token (``append_eos``).

**Padding.** Batches are padded on either side with explicit ``position_ids``
(``cumsum(attention_mask) - 1``), so every row computes what it computes alone, and the pooled
position is the last *real* token of each row, found from the attention mask (never from the
pad id, which for SmolLM2 and Qwen3 is the EOS token itself).

**Embedding**: final-layer hidden state at that position, L2-normalised (float32).
**Reranking**: ``logit(yes) - logit(no)`` of the unchanged LM head at that position, or (the
``mlp`` ablation) a small MLP on the same hidden state. The yes/no token ids come from
:func:`answer_token_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from irflow.io import InputError

# Rows per inference batch at most; the token budget usually binds first.
DEFAULT_MAX_BATCH = 64


def answer_token_ids(tokenizer, template: str, yes: str = "yes", no: str = "no"):
    """``(yes_id, no_id, yes_text, no_text)``: single-token ids of the two answers.

    Both answers use the same form: with a leading space first when the template ends in a
    non-space character (``"Answer:"`` is followed by ``" yes"`` in running text), without it
    first when it ends in whitespace; the other form is the fallback. Raises
    :class:`InputError` listing the tokenizations when neither form gives one token for each.
    """
    prefer_space = not template[-1:].isspace()
    leads = [" ", ""] if prefer_space else ["", " "]
    tried = []
    for lead in leads:
        y = tokenizer(lead + yes, add_special_tokens=False).input_ids
        n = tokenizer(lead + no, add_special_tokens=False).input_ids
        if len(y) == 1 and len(n) == 1 and y != n:
            return y[0], n[0], lead + yes, lead + no
        tried.append(
            f"{lead + yes!r} -> {tokenizer.convert_ids_to_tokens(y)}, "
            f"{lead + no!r} -> {tokenizer.convert_ids_to_tokens(n)}"
        )
    raise InputError(
        f"reranking: the answers {yes!r}/{no!r} are not single, distinct tokens of this "
        f"tokenizer ({type(tokenizer).__name__}) with or without a leading space: "
        + "; ".join(tried)
        + "; set reranking.yes/no to words that are, or use reranking.head: mlp"
    )


class Prompter:
    """Builds the token ids of queries, documents and (query, document) pairs."""

    def __init__(self, tokenizer, embedding, reranking):
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(
                f"the unified decoder needs a fast tokenizer (offsets for truncation); "
                f"got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self.embedding = embedding
        self.reranking = reranking
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and probe[:1] == [bos] else []
        self.eos = []
        if embedding.append_eos:
            if tokenizer.eos_token_id is None:
                raise InputError(
                    "embedding.append_eos: the tokenizer has no EOS token; set append_eos: false"
                )
            self.eos = [tokenizer.eos_token_id]
        candidates = (tokenizer.pad_token_id, tokenizer.eos_token_id)
        self.pad_id = int(next((i for i in candidates if i is not None), 0))
        self.yes_id = self.no_id = None
        if reranking.head == "yes_no":
            self.yes_id, self.no_id, self.yes_text, self.no_text = answer_token_ids(
                tokenizer, reranking.template, reranking.yes, reranking.no
            )

    def _encode(self, strings: list[str]) -> list[list[int]]:
        return self.tokenizer(strings, add_special_tokens=False, return_attention_mask=False)[
            "input_ids"
        ]

    def fill(
        self,
        template: str,
        values: Sequence[dict[str, str]],
        truncate: str,
        limit: int,
        add_eos: bool,
    ) -> list[list[int]]:
        """Token ids of ``template`` filled with each mapping, the ``truncate`` field cut so
        that the ids (with BOS and, if ``add_eos``, EOS) fit in ``limit``."""
        eos = self.eos if add_eos else []
        room = limit - len(self.bos) - len(eos)
        ids = self._encode([_format(template, v) for v in values])
        for i, row in enumerate(ids):
            if len(row) > room:
                ids[i] = self._truncated(template, values[i], truncate, room)
        return [self.bos + row + eos for row in ids]

    def _truncated(self, template: str, value: dict[str, str], field: str, room: int) -> list[int]:
        text = value[field]
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        whole = self._encode([_format(template, value)])[0]
        keep = max(0, len(offsets) - (len(whole) - room))
        while True:
            cut = offsets[keep - 1][1] if keep > 0 else 0
            ids = self._encode([_format(template, {**value, field: text[:cut]})])[0]
            if len(ids) <= room or keep == 0:
                break
            keep -= 1
        if len(ids) > room:
            empty = _format(template, {**value, field: ""})
            raise InputError(
                f"the template without its {field} is {len(ids)} tokens, more than the "
                f"{room} allowed (max length minus special tokens): {empty[:120]!r}"
            )
        return ids

    def query_ids(self, queries: Sequence[str]) -> list[list[int]]:
        e = self.embedding
        values = [{"query": q} for q in queries]
        return self.fill(e.query_template, values, "query", e.max_query_length, True)

    def document_ids(self, documents: Sequence[str]) -> list[list[int]]:
        e = self.embedding
        values = [{"document": d} for d in documents]
        return self.fill(e.document_template, values, "document", e.max_document_length, True)

    def pair_ids(self, queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
        r = self.reranking
        values = [{"query": q, "document": d} for q, d in zip(queries, documents, strict=True)]
        return self.fill(r.template, values, "document", r.max_length, False)


def _format(template: str, value: dict[str, str]) -> str:
    # str.replace rather than str.format: templates and texts may hold literal braces.
    out = template
    for key, text in value.items():
        out = out.replace("{" + key + "}", text)
    return out


def pad_batch(
    batch_ids: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of a padded batch."""
    longest = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        if not ids:
            raise ValueError("empty input")
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, span] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.long) * (positions + 1)).argmax(dim=1)


def make_score_head(hidden_size: int, mlp_hidden: int, seed: int) -> nn.Module:
    """The ``mlp`` ablation's scoring head, initialised from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed + 7919)
    head = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
    with torch.no_grad():
        for layer in (head[0], head[2]):
            bound = 1.0 / layer.in_features**0.5
            uniform = torch.rand(layer.weight.shape, generator=generator)
            layer.weight.copy_(uniform * 2 * bound - bound)
            layer.bias.zero_()
    return head


class UnifiedModel(nn.Module):
    """A peft-wrapped causal LM used as embedder (``task="embed"``) and reranker
    (``task="rerank"``)."""

    def __init__(self, peft_model, tokenizer, spec, routing=None, score_head=None):
        super().__init__()
        self.peft = peft_model
        self.spec = spec
        self.routing = routing
        self.score_head = score_head
        lm = peft_model.get_base_model()
        self.decoder = lm.get_decoder()
        self.lm_head = lm.get_output_embeddings()
        self.prompter = Prompter(tokenizer, spec.embedding, spec.reranking)
        if spec.reranking.head == "mlp" and score_head is None:
            raise ValueError("reranking.head is 'mlp' but no score head was given")

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def tokenizer(self):
        return self.prompter.tokenizer

    def last_hidden(self, batch_ids: Sequence[Sequence[int]], task: str, side: str | None = None):
        """Final hidden state at each row's last real token, ``(batch, hidden)``."""
        side = side or self.spec.embedding.padding_side
        padded = pad_batch(batch_ids, self.prompter.pad_id, side)
        batch = {k: v.to(self.device) for k, v in padded.items()}
        routing = self.routing
        if routing is not None:
            routing.task = task
            routing.token_mask = batch["attention_mask"].bool()
            routing.aux_losses = []
            routing.recording = True
        try:
            hidden = self.decoder(**batch, use_cache=False).last_hidden_state
        finally:
            if routing is not None:
                routing.recording = False
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(batch["attention_mask"])]

    def embed_ids(self, batch_ids, side: str | None = None) -> torch.Tensor:
        pooled = self.last_hidden(batch_ids, "embed", side).float()
        return torch.nn.functional.normalize(pooled, dim=-1)

    def score_ids(self, batch_ids, side: str | None = None) -> torch.Tensor:
        pooled = self.last_hidden(batch_ids, "rerank", side)
        if self.score_head is not None:
            return self.score_head(pooled.float()).squeeze(-1)
        logits = self.lm_head(pooled).float()
        return logits[:, self.prompter.yes_id] - logits[:, self.prompter.no_id]

    def aux_loss(self) -> torch.Tensor | None:
        """Mean load-balancing term of the last forward pass (MoE-LoRA), else None."""
        if self.routing is None or not self.routing.aux_losses:
            return None
        return torch.stack(self.routing.aux_losses).mean()

    # ------------------------------------------------------------------ inference (numpy)
    def _run(self, ids: list[list[int]], fn, batch_tokens: int | None, max_batch: int):
        """``fn`` over token-budget batches (:mod:`irflow.batching`), each distinct input once,
        in inference mode; rows in input order."""
        from irflow.batching import default_batch_tokens, plan_batches, unique

        distinct, index = unique([tuple(x) for x in ids])
        budget = batch_tokens or default_batch_tokens(self.device)
        out: np.ndarray | None = None
        with torch.inference_mode():
            for batch in plan_batches([len(x) for x in distinct], budget, max_batch):
                values = fn([list(distinct[i]) for i in batch]).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(distinct), *values.shape[1:]), dtype=np.float32)
                out[batch] = values
        return None if out is None else out[index]

    def encode(
        self,
        texts: Sequence[str],
        role: str,
        batch_tokens: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> np.ndarray:
        """L2-normalised embeddings (float32, ``(n, hidden)``); ``role``: query or document.
        ``batch_tokens``: padded tokens per batch (default: the device's budget)."""
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        build = self.prompter.query_ids if role == "query" else self.prompter.document_ids
        out = self._run(build(list(texts)), self.embed_ids, batch_tokens, max_batch)
        if out is None:
            return np.zeros((0, self.lm_head.in_features), dtype=np.float32)
        return out

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_tokens: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> np.ndarray:
        """Relevance scores (``logit(yes) - logit(no)``, or the MLP head's output)."""
        ids = self.prompter.pair_ids(list(queries), list(documents))
        out = self._run(ids, self.score_ids, batch_tokens, max_batch)
        return np.zeros(0, dtype=np.float32) if out is None else out

    def describe(self) -> dict[str, Any]:
        p = self.prompter
        out: dict[str, Any] = {"pad_id": p.pad_id, "bos": p.bos, "eos": p.eos}
        if p.yes_id is not None:
            out.update(yes_id=p.yes_id, no_id=p.no_id, yes_text=p.yes_text, no_text=p.no_text)
        return out
