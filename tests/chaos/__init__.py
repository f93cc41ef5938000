"""Randomized failover trials with a checker: the chaos tier (see ``engine.py``)."""
