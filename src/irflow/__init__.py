"""irflow: importable core of a reproducible Snakemake workflow for neural rerankers and embedders.

The workflow's scripts (``workflow_scripts/``) are thin: they read Snakemake's inputs and call
the functions here, which never see Snakemake objects and so can be tested and reused alone.
"""

__version__ = "0.1.0"
