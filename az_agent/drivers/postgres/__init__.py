"""PostgreSQL: streamed ``pg_dump`` backups into object storage, and all-or-nothing restores.

``base`` holds the :class:`~az_agent.drivers.postgres.base.PostgresDumper` interface and its
results, ``dumper`` the implementation over ``pg_dump``/``pg_restore`` and ``asyncpg``,
``config`` the settings and the password resolver.
"""
