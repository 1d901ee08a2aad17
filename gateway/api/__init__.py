"""The REST adapter: routes per resource, dependencies and the one error mapping."""
