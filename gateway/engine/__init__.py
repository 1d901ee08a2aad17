"""The execution engine: workers that claim deployments and executions with leases and advance them.

Records live in the database. A worker claims one whose ``wake_at`` has come (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), advances it with the deployer in non-blocking mode, persists every
transition before acknowledging it, then releases it with the next ``wake_at``. A waiting
execution (a Slurm job running, a pipeline moving data) is only a row: it holds no thread and
no SSH connection. A worker that dies leaves an expired lease; another worker takes it over and
the deployer resumes without repeating side effects.
"""
