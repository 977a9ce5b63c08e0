"""Engines: the `Engine` interface, its implementations and the registry of served models."""
