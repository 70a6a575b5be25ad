"""Evaluation and analysis: COCO metrics by size, the report, error analysis and comparison, the explain
path and what the neck learned."""
