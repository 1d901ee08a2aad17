"""Services: the gateway's use cases as plain functions over a database session."""
