"""The PostgreSQL servers come from tests/conftest.py (one pair for the whole session)."""
