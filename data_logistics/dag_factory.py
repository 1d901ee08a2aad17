"""Builds the pipelines' Airflow DAGs (Airflow 3 SDK); each DAG file in ``dags/`` is one call.

A DAG is one task, ``transfer``, that calls :func:`data_logistics.pipelines.execute` with the
run's ``conf``: the key must not travel between tasks (XCom is stored), so unwrapping, connecting
and copying happen in the same process. Retries are off: a retry would find its single-use token
spent. A failed run is started again by the caller with a fresh token, and the transfer resumes
from what landed. Progress goes to XCom (key ``progress``) and to the task log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, task

from data_logistics import pipelines
from data_logistics.credentials import burn
from data_logistics.urls import policy_for
from hpcwaas.settings import get_settings

log = logging.getLogger(__name__)

DOCS = {
    "stage_in": "Stage data in: an https/http URL, a file in local storage, a path on a site, or a catalogue "
                "dataset resolved by the gateway, to a path in a site user's work directory.",
    "stage_out": "Stage data out: a path in a site user's work directory to local storage or another site; the "
                 "result (checksum, size, origin) is returned for the catalogue to register.",
    "image_transfer": "Move a container image from the image store (an HTTP URL) to a site, resuming with Range.",
    "site_to_site": "Copy a file or directory between two sites, streamed through the worker.",
    "sync": "Mirror storage targets to site paths on a schedule set by an operator (HPCWAAS_PIPELINES_SYNC_*).",
}


def _spend_conf_tokens(context: dict[str, Any]) -> None:
    """DAG failure callback: spend any token a failed run did not use (belt and braces)."""
    run = context.get("dag_run")
    conf = dict(getattr(run, "conf", None) or {})
    for addr, token in pipelines._tokens_in(conf):
        burn(addr, token)


def build(pipeline: str) -> DAG:
    """The DAG of one pipeline."""
    settings = get_settings()
    schedule = settings.pipelines_sync_schedule if pipeline == "sync" else None
    with DAG(
        dag_id=pipeline,
        description=DOCS[pipeline],
        doc_md=DOCS[pipeline],
        schedule=schedule,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        is_paused_upon_creation=False,
        max_active_runs=8,
        tags=["hpcwaas", "data-logistics"],
        default_args={"retries": 0, "owner": "hpcwaas"},
        on_failure_callback=_spend_conf_tokens,
    ) as dag:

        @task(task_id="transfer", retries=0)
        def transfer(**context: Any) -> dict[str, Any] | list[dict[str, Any]]:
            conf = dict(context["dag_run"].conf or {})
            ti = context["ti"]
            progress = pipelines.XComProgress(lambda value: ti.xcom_push(key="progress", value=value))
            current = get_settings()
            if pipeline == "sync" and not conf:
                from data_logistics.sync import run_scheduled

                return run_scheduled(current, progress)
            return pipelines.execute(pipeline, conf, storage_root=current.pipelines_storage_root,
                                     progress=progress, ssh_timeout=current.ssh_connect_timeout,
                                     url_policy=policy_for(current))

        transfer()
    return dag
