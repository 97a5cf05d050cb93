"""specdec-sqlite-sink: record specdec runs and requests in a SQLite database.

The sink (entry point ``sqlite``) is :class:`.sink.SqliteSink`; the tables are
described in the package README and in :data:`.sink.SCHEMA`.
"""

from __future__ import annotations

from specdec_sqlite_sink.sink import ENV_PATH, SCHEMA, SqliteSink, connect, database_path

__all__ = ["ENV_PATH", "SCHEMA", "SqliteSink", "connect", "database_path"]
