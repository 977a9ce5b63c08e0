"""The HTTP API: two dialects (Zhipu `/api/paas/v4`, OpenAI `/v1`) over one core."""
