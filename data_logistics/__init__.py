"""Data logistics: Airflow pipelines that stage data and images in and out of HPC sites.

The transfer engine (:mod:`data_logistics.transfer`) and the credential handling
(:mod:`data_logistics.credentials`) are plain functions, usable and tested without Airflow; the
DAGs in ``data_logistics/dags`` are thin adapters over them, and :mod:`data_logistics.client`
triggers and follows DAG runs over Airflow's REST API v2. Nothing here imports the gateway.
"""
