"""Stream ledgers: the SQL one (SQLite, embedded) and, in distributed mode, the Redis one."""
