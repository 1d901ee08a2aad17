"""Request and response models of the REST API (pydantic), one module per resource."""
