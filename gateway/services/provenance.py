"""Provenance of an execution as a W3C PROV document (PROV-JSON, built with the ``prov`` library).

One record answers what a reviewer asks of a result: who ran it, which workflow version (its
digest) and which image (its digest) ran, on which site, through which Slurm jobs and pipeline
runs, which catalogue datasets went in (with their checksums) and which came out. Everything
is read from what the gateway already persisted (the execution, its deployment, the version and
the execution's deployer record), so it is the same before and after a restart. Secret inputs
are left out, as everywhere else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from prov.constants import PROV
from prov.model import ProvActivity, ProvAgent, ProvDocument, ProvEntity
from sqlalchemy.orm import Session

from deployer.state import DeploymentRecord
from gateway.persistence.models import Deployment, Execution, Site, User, WorkflowVersion
from gateway.services import runs as run_service

NAMESPACE = ("hpcwaas", "urn:hpcwaas:")


def execution_provenance(db: Session, user: User, execution_id: str) -> dict[str, Any]:
    """The PROV-JSON document of one of the caller's executions (any, for an admin)."""
    execution = run_service.get_execution(db, user, execution_id)
    deployment = db.get(Deployment, execution.deployment_id)
    assert deployment is not None  # a foreign key, RESTRICT on delete
    version = db.get(WorkflowVersion, deployment.version_id)
    assert version is not None
    owner, site = db.get(User, execution.owner_id), db.get(Site, deployment.site_id)
    document = build(execution, version, owner.username if owner else execution.owner_id,
                     site.name if site else deployment.site_id)
    text = document.serialize(format="json")  # a str when no destination is given
    return dict(json.loads(text or "{}"))


def build(execution: Execution, version: WorkflowVersion, username: str, site: str) -> ProvDocument:
    """The document: the execution and its steps as activities, the scientist as the agent, the
    workflow version as the plan, images and datasets as entities."""
    doc = ProvDocument()
    doc.add_namespace(*NAMESPACE)
    person = doc.agent(_id("user", username), {"prov:type": PROV["Person"]})
    declared = (version.workflows or {}).get(execution.tosca_workflow, {}).get("inputs", {})
    plan = doc.entity(_id("workflow", version.workflow_id, f"v{version.number}"), {
        "prov:type": PROV["Plan"], "hpcwaas:digest": version.digest,
        "hpcwaas:tosca_workflow": execution.tosca_workflow})
    run = doc.activity(_id("execution", execution.id), _utc(execution.started_at),
                       _utc(execution.finished_at), _attributes({
                           "hpcwaas:state": execution.state.value, "hpcwaas:site": site,
                           "hpcwaas:login": execution.login, "hpcwaas:deployment": execution.deployment_id,
                           **{f"hpcwaas:input/{quote(name, safe='')}": value for name, value in execution.inputs.items()
                              if not declared.get(name, {}).get("secret")}}))
    doc.wasAssociatedWith(run, person, plan)
    doc.used(run, plan)

    record = DeploymentRecord.model_validate(execution.record) if execution.record else None
    nodes = record.nodes if record else {}
    for node in nodes.values():
        digest = node.attributes.get("image_digest")
        if digest:
            doc.used(run, _entity(doc, _id("image", str(digest)), {"hpcwaas:node": node.name}))

    # The catalogue datasets the request named (the run used them even if it stopped before staging).
    named = [value.removeprefix("dataset:") for name, spec in declared.items()
             if spec.get("catalogue_dataset") and isinstance(value := execution.inputs.get(name), str)
             and "://" not in value and not value.startswith("file:")]
    for dataset_id in named:
        doc.used(run, _entity(doc, _id("dataset", dataset_id), {}))

    kinds = {n.get("name"): n.get("kind") for n in version.nodes or [] if isinstance(n, dict)}
    staged: list[ProvEntity] = []
    made: list[ProvEntity] = []
    for step in execution.steps:
        act = _step(doc, execution, step, person, run)
        for node_name in _nodes_of(record, execution.tosca_workflow, str(step.get("name"))):
            attrs = nodes[node_name].attributes if node_name in nodes else {}
            if kinds.get(node_name) == "stage_out" and attrs.get("dataset_id"):
                result = _entity(doc, _id("dataset", str(attrs["dataset_id"])), _attributes({
                    "hpcwaas:sha256": attrs.get("sha256"), "hpcwaas:size": attrs.get("size"),
                    "hpcwaas:location": attrs.get("location")}))
                doc.wasGeneratedBy(result, act)
                doc.wasAttributedTo(result, person)
                made.append(result)
            elif kinds.get(node_name) == "stage_in" and attrs.get("pipeline_run_id"):
                # Records from before stage-in noted its dataset: the one named dataset, if one.
                source = attrs["source_dataset"] if "source_dataset" in attrs else \
                    (named[0] if len(named) == 1 else None)
                if source:
                    entity = _entity(doc, _id("dataset", str(source)), _attributes({
                        "hpcwaas:sha256": attrs.get("sha256"), "hpcwaas:size": attrs.get("size")}))
                    doc.used(act, entity)
                    staged.append(entity)
    for result in made:
        for source_entity in staged:
            doc.wasDerivedFrom(result, source_entity)
    return doc


def _step(doc: ProvDocument, execution: Execution, step: dict[str, Any], person: ProvAgent,
          run: ProvActivity) -> ProvActivity:
    act = doc.activity(_id("execution", execution.id, str(step.get("name"))), _epoch(step.get("started_at")),
                       _epoch(step.get("finished_at")), _attributes({
                           "hpcwaas:state": step.get("state"), "hpcwaas:slurm_job_id": step.get("job_id"),
                           "hpcwaas:pipeline_run_id": step.get("pipeline_run_id"),
                           "hpcwaas:attempts": step.get("attempts"), "hpcwaas:error": step.get("error")}))
    doc.wasStartedBy(act, starter=run, time=_epoch(step.get("started_at")))
    doc.wasAssociatedWith(act, person)
    return act


def _nodes_of(record: DeploymentRecord | None, workflow: str, step: str) -> list[str]:
    run = record.last_run(workflow) if record else None
    if run is None:
        return []
    ops = run.ops_of_step(f"{workflow}.{step}") or run.ops_of_step(step)
    return list(dict.fromkeys(op.node for op in ops.values() if op.node))


def _id(kind: str, *parts: str) -> str:
    """A qualified name ``hpcwaas:kind/part/...``, each part percent-encoded: ids, digests and
    step names are free text, and PROV refuses spaces, quotes and angle brackets in names."""
    return "hpcwaas:" + "/".join((kind, *(quote(p, safe=":") for p in parts)))


def _entity(doc: ProvDocument, identifier: str, attributes: dict[str, Any]) -> ProvEntity:
    """The entity with this id, made once (a dataset can be both an input and a result's source)."""
    found = next((r for r in doc.get_record(identifier) if isinstance(r, ProvEntity)), None)
    if found is not None:
        known = {str(name) for name, _ in found.attributes}  # an attribute is set once, not listed twice
        found.add_attributes({k: v for k, v in attributes.items() if k not in known})
        return found
    return doc.entity(identifier, attributes)


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    """PROV attribute values: no empty ones, and anything that is not a literal as JSON text."""
    return {k: v if isinstance(v, str | int | float | bool) else json.dumps(v, sort_keys=True)
            for k, v in values.items() if v is not None}


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value if isinstance(value, datetime) else None
