"""`/models` in both dialects."""
