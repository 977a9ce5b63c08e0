"""Data, objectives (blank infilling, CLM, MLM), the training loop, evaluation and experiments.

Imports torch: nothing on the serving path imports this package.
"""
