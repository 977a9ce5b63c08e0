"""Persistence: the SQLAlchemy engine and session, the tables, and their migrations."""
