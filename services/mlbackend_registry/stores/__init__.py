"""Storage behind the registry: metadata stores (one interface, SQLAlchemy Core for
SQLite and PostgreSQL) and the content-addressed artifact directory."""
