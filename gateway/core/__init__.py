"""Gateway core: configuration, database and security primitives."""
