"""Teachers: the models that score (query, document) pairs for distillation.

A :class:`TeacherSpec` names the model and its kind (``bi-encoder``: cosine of embeddings,
``cross-encoder``: the classifier logit, ``causal-lm``: the yes-minus-no logit after a
prompt); :func:`load_teacher` loads one. Scoring mined samples with a teacher, sharded and
merged in order, is :mod:`irflow.training_data.teacher`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irflow.batching import (
    DEFAULT_MAX_BATCH,
    Counters,
    default_batch_tokens,
    encode_texts,
    plan_batches,
    predict_pairs,
)
from irflow.batching import tokenizer_max_length as _tokenizer_max_length
from irflow.batching import unique as _unique
from irflow.io import InputError
from irflow.models import ModelRef
from irflow.training_data.artifacts import SCORE_KINDS

log = logging.getLogger(__name__)

# A generic relevance prompt; the next token after it is the answer. Chat-format rerankers
# (e.g. Qwen3-Reranker) need their own template and yes_token="yes", no_token="no".
DEFAULT_TEMPLATE = (
    "Query: {query}\nDocument: {document}\n"
    "Is the document relevant to the query? Answer yes or no.\nAnswer:"
)

# Batching by token budget is shared with the bi-encoder paths (irflow.batching), and so are
# its defaults (DEFAULT_BATCH_TOKENS per device, DEFAULT_MAX_BATCH rows).


@dataclass(frozen=True)
class TeacherSpec:
    """One configured teacher: its kind, its model and how its inputs are built."""

    name: str
    kind: str
    model: ModelRef
    query_prompt: str | None = None
    document_prompt: str | None = None
    template: str = DEFAULT_TEMPLATE
    yes_token: str = " yes"
    no_token: str = " no"
    batch_tokens: int | None = None  # None: DEFAULT_BATCH_TOKENS for the device
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self):
        if self.kind not in SCORE_KINDS:
            raise ValueError(
                f"teacher {self.name!r}: kind {self.kind!r} is not one of {sorted(SCORE_KINDS)}"
            )
        if self.kind == "causal-lm":
            for key in ("{query}", "{document}"):
                if self.template.count(key) != 1:
                    raise ValueError(
                        f"teacher {self.name!r}: the template must contain {key} exactly once"
                    )
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError(f"teacher {self.name!r}: batch_tokens must be >= 1")
        if self.max_batch < 1:
            raise ValueError(f"teacher {self.name!r}: max_batch must be >= 1")

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any], model: ModelRef) -> TeacherSpec:
        """``entry`` is a ``teachers:`` config entry (its ``model`` key names the model whose
        resolved reference is ``model``); unknown keys are refused."""
        entry = {k: v for k, v in entry.items() if k not in ("model", "description")}
        known = set(cls.__dataclass_fields__) - {"name", "model"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"teacher {name!r}: unknown keys {unknown}")
        return cls(name=name, model=model, **entry)

    def describe(self) -> dict[str, Any]:
        """What determines the scores (stored in the artifacts' metadata)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "model": {
                "name": self.model.name,
                "hf_id": self.model.hf_id,
                "path": self.model.path,
                "revision": self.model.revision,
                "max_length": self.model.max_length,
                "trust_remote_code": self.model.trust_remote_code,
            },
        }
        if self.kind == "bi-encoder":
            out["query_prompt"] = self.query_prompt
            out["document_prompt"] = self.document_prompt
        if self.kind == "causal-lm":
            out.update(template=self.template, yes_token=self.yes_token, no_token=self.no_token)
        return out


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------
@dataclass
class Teacher:
    """A loaded teacher: :meth:`score` maps aligned lists of query and document texts to scores."""

    spec: TeacherSpec
    model: Any
    device: str = "cpu"
    tokenizer: Any = None  # causal-lm only (the other kinds carry theirs inside the model)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self):
        """Checks that the model fits the kind (subclasses)."""

    @property
    def score_kind(self) -> str:
        return SCORE_KINDS[self.spec.kind]

    @property
    def batch_tokens(self) -> int:
        if self.spec.batch_tokens:
            return self.spec.batch_tokens
        return default_batch_tokens(self.device)

    def scoring(self) -> dict[str, Any]:
        return {"batch_tokens": self.batch_tokens, "max_batch": self.spec.max_batch}

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        self.counters.pairs += len(queries)
        if not queries:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            return np.asarray(self._score(list(queries), list(docs)), dtype=np.float32)

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        raise NotImplementedError


class BiEncoderTeacher(Teacher):
    """Cosine similarity of normalised ``SentenceTransformer`` embeddings."""

    def embed(self, texts: list[str], role: str = "document") -> np.ndarray:
        """Normalised embeddings, via ``encode_query`` or ``encode_document`` (``role``).

        Those are ``encode`` with the model's own query/document prompt and task routing (for
        symmetric models such as MiniLM they are exactly ``encode``); the spec's
        ``query_prompt``/``document_prompt`` override the model's prompts.
        """
        return encode_texts(
            self.model,
            texts,
            role=role,
            prompt=self.spec.query_prompt if role == "query" else self.spec.document_prompt,
            batch_tokens=self.batch_tokens,
            max_batch=self.spec.max_batch,
            counters=self.counters,
        )

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        unique_q, q_index = _unique(queries)
        unique_d, d_index = _unique(docs)
        q_emb = self.embed(unique_q, "query")
        d_emb = self.embed(unique_d, "document")
        return np.einsum("ij,ij->i", q_emb[q_index], d_emb[d_index])


class CrossEncoderTeacher(Teacher):
    """Raw logit of a one-label ``CrossEncoder`` (activation Identity)."""

    def __post_init__(self):
        labels = getattr(self.model, "num_labels", 1)
        if labels != 1:
            raise InputError(
                f"teacher {self.spec.name!r}: the cross-encoder has {labels} output labels; "
                f"a teacher needs a one-label (relevance logit) model"
            )

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        return predict_pairs(
            self.model,
            list(zip(queries, docs, strict=True)),
            batch_tokens=self.batch_tokens,
            max_batch=self.spec.max_batch,
            counters=self.counters,
        )


class CausalLMTeacher(Teacher):
    """``logit(yes) - logit(no)`` for the token after the template, from a causal LM.

    The template is split at ``{document}`` and its pieces, the query and the document are
    tokenized separately (without special tokens; a BOS token is prepended when the tokenizer
    adds one by itself), so truncation to the model's maximum length only ever shortens the
    document and never cuts the template or the answer position. Batches are left-padded with
    explicit position ids (``cumsum(attention_mask) - 1``), so each row computes what the same
    token ids compute alone; only the last position's logits are materialised.
    """

    def __post_init__(self):
        tok = self.tokenizer
        if tok is None:
            raise ValueError("a causal-lm teacher needs its tokenizer")
        self.yes_id = self._single_token(self.spec.yes_token)
        self.no_id = self._single_token(self.spec.no_token)
        if self.yes_id == self.no_id:
            raise InputError(f"teacher {self.spec.name!r}: yes and no are the same token")
        probe = tok("a").input_ids
        self.bos = (
            [tok.bos_token_id]
            if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
            else []
        )
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        config_limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = self.spec.model.max_length or _tokenizer_max_length(tok, config_limit)
        head, tail = self.spec.template.split("{document}")
        self.head, self.tail = head, tail
        import inspect

        self.keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise InputError(
                f"teacher {self.spec.name!r}: answer {text!r} is {len(ids)} tokens {pieces} in "
                f"the tokenizer of {self.spec.model.hf_id or self.spec.model.path}, it must be "
                f"exactly one; set yes_token/no_token (e.g. 'yes' without the space)"
            )
        return ids[0]

    def input_ids(self, queries: list[str], docs: list[str]) -> list[list[int]]:
        """The token ids the model sees for each (query, document) pair."""
        tok = self.tokenizer

        def pieces(texts):
            return tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

        heads = pieces([self.head.replace("{query}", q) for q in queries])
        tails = pieces([self.tail.replace("{query}", q) for q in queries])
        bodies = pieces(docs)
        out = []
        for query, head, body, tail in zip(queries, heads, bodies, tails, strict=True):
            room = self.max_length - len(self.bos) - len(head) - len(tail)
            if room < 0:
                raise InputError(
                    f"teacher {self.spec.name!r}: the template with query {query[:80]!r} is "
                    f"{len(head) + len(tail)} tokens, longer than max_length {self.max_length}"
                )
            out.append(self.bos + head + body[:room] + tail)
        return out

    def forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        import torch

        longest = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, longest - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if self.keep_last else {}
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            **kwargs,
        )
        last = out.logits[:, -1, :].float()
        return (last[:, self.yes_id] - last[:, self.no_id]).cpu().numpy()

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        pairs, index = _unique(list(zip(queries, docs, strict=True)))
        ids = self.input_ids([q for q, _ in pairs], [d for _, d in pairs])
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.batch_tokens, self.spec.max_batch)
        self.counters.add_batches(lengths, batches)
        scores = np.empty(len(pairs), dtype=np.float32)
        for batch in batches:
            scores[batch] = self.forward([ids[i] for i in batch])
        return scores[index]


def _load_causal_lm(ref: ModelRef, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irflow.models import model_kwargs

    tokenizer = AutoTokenizer.from_pretrained(
        ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code
    )
    model = AutoModelForCausalLM.from_pretrained(
        ref.name_or_path,
        revision=ref.revision,
        trust_remote_code=ref.trust_remote_code,
        **model_kwargs(device),
    )
    return model.to(device).eval(), tokenizer


def load_teacher(spec: TeacherSpec, device: str | None = None) -> Teacher:
    """Load ``spec``'s model on ``device`` (default :func:`irflow.models.pick_device`).

    Raises :class:`InputError` naming the teacher and its model when the model cannot be loaded
    or does not fit the kind (a multi-label cross-encoder, a multi-token yes/no answer).
    """
    from irflow.models import pick_device

    device = device or pick_device()
    try:
        if spec.kind == "bi-encoder":
            from irflow.models import load_sentence_transformer

            return BiEncoderTeacher(spec, load_sentence_transformer(spec.model, device), device)
        if spec.kind == "cross-encoder":
            from irflow.cross_encoder import load_cross_encoder

            return CrossEncoderTeacher(spec, load_cross_encoder(spec.model, device), device)
        try:
            model, tokenizer = _load_causal_lm(spec.model, device)
        except InputError:
            raise
        except Exception as err:  # many library error types; the user needs the model's name
            raise InputError(
                f"model {spec.model.name!r} ({spec.model.hf_id or spec.model.path}) could not "
                f"be loaded: {err}"
            ) from err
        return CausalLMTeacher(spec, model, device, tokenizer=tokenizer)
    except InputError as err:
        if str(err).startswith(f"teacher {spec.name!r}"):
            raise
        raise InputError(f"teacher {spec.name!r}: {err}") from err


def causal_lm_teacher(spec: TeacherSpec, model, tokenizer, device: str = "cpu") -> Teacher:
    """A causal-LM teacher around an already loaded model and tokenizer."""
    return CausalLMTeacher(spec, model, device, tokenizer=tokenizer)
