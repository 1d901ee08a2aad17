"""The ``site_to_site`` pipeline as an Airflow DAG (built by data_logistics.dag_factory)."""

from __future__ import annotations

from data_logistics.dag_factory import build

dag = build("site_to_site")
