"""The data catalogue: FAIR datasets and storage targets, searchable, owned, browsable.

Usable without the gateway: ``catalogue.service`` takes a SQLAlchemy session and a
``Principal``; ``catalogue.api.make_router`` and ``catalogue.web.make_router`` build FastAPI
routers whose authentication the host application supplies.
"""
