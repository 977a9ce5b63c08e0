"""The business of the platform: accounts, keys, auth, metering. Pure domain code (no FastAPI)."""
