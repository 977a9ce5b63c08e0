"""`/chat/completions` in both dialects."""
