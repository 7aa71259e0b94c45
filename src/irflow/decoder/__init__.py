"""One decoder LM that both embeds and reranks.

Modules (import them directly; this package imports nothing heavy by itself, so the workflow's
DAG code never pays for torch):

=================  =========================================================================
``spec``           the configuration dict: sections, defaults, validation (``parse_spec``)
``base``           GGUF -> safetensors conversion (``convert_gguf``), base model loading
``adapters``       LoRA and task-aware MoE-LoRA on peft; save/load in peft's format
``model``          prompts, padding, EOS pooling, yes/no scores (``UnifiedModel``)
``losses``         InfoNCE (+ Matryoshka), BCE, RankNet, PCGrad, cosine
``samples``        the workflow's scored samples, queries and corpus; per-task seeded batches
``train``          staged training (``train_unified``)
``checkpoint``     build / save / reload a model folder (``load_unified``)
``inference``      dense retrieval, cosine reranking, yes/no reranking (run dicts)
``diagnostics``    gradient-cosine and expert-usage files and their SVG heatmaps
=================  =========================================================================
"""
