"""Models: GLM architectures (PyTorch, imported only where used) and chat templates."""
