"""az-agent: cross-availability-zone recovery for Pinot and PostgreSQL through object storage."""

__version__ = "0.1.0"
