"""The hpcwaas gateway: the REST service, its persistence and its execution engine."""
