"""Benchmarks of serving: `glmaas bench serve` load-tests any OpenAI-compatible endpoint."""
