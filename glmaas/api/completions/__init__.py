"""`/v1/completions`: OpenAI's legacy completions, for every generating engine."""
