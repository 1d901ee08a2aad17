"""Every DAG imports in the Airflow virtualenv of the stack (a DagBag with no import errors)."""

from __future__ import annotations

import json
import subprocess

import pytest

from hpcwaas.stack.info import StackInfo

pytestmark = pytest.mark.slow

SCRIPT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS)
print("RESULT " + json.dumps({"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
      "dags": {d.dag_id: {"tasks": [t.task_id for t in d.tasks], "tags": sorted(d.tags),
                          "retries": [t.retries for t in d.tasks]} for d in bag.dags.values()}}))
"""


def test_every_dag_imports(stack: StackInfo, tmp_path) -> None:
    if stack.airflow is None:
        pytest.fail("the stack has no Airflow; run `python -m hpcwaas.stack up`", pytrace=False)
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(stack.airflow.venv / "bin" / "python"), "-c",
                          f"DAGS = {str(stack.airflow.dags_folder)!r}\n" + SCRIPT],
                         capture_output=True, text=True, env=env, timeout=180)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out.stderr[-3000:]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["errors"] == {}
    assert set(result["dags"]) == {"stage_in", "stage_out", "image_transfer", "site_to_site", "sync"}
    for dag in result["dags"].values():
        assert dag["tasks"] == ["transfer"] and dag["retries"] == [0] and "hpcwaas" in dag["tags"]
