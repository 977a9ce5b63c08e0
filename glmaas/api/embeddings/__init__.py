"""Embeddings: `POST /v1/embeddings` and `POST /api/paas/v4/embeddings`."""
