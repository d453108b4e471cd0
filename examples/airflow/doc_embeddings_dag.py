"""Airflow DAG: the doc-embeddings job once a day, and a downstream job that waits for it.

- ``embed`` runs ``headrace submit`` for the DAG run's logical date (``{{ ds }}``).
  A retry reruns the same command: resume keeps what the failed attempt staged, so a
  retry redoes only the unfinished inputs. Exit 3 is the quality gate refusing the date
  (too many records quarantined): a data problem that retrying will not fix, so the
  command turns it into Airflow's "skipped" state (exit 99 with skip_on_exit_code) and
  the ``data_quality_alert`` task, which runs only then, tells someone.
- ``committed`` is a sensor for jobs in other DAGs: ``headrace status`` exits 0 once the
  date's partition is committed and 1 before.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.sensors.bash import BashSensor
from airflow.utils.trigger_rule import TriggerRule

HEADRACE = "cd /srv/headrace && .venv/bin/headrace"
OUTPUT = "s3://lake/doc_embeddings"

with DAG(
    dag_id="doc_embeddings",
    schedule="15 2 * * *",
    start_date=dt.datetime(2026, 11, 1),
    catchup=True,  # backfills missed dates one by one, oldest first
    max_active_runs=1,  # one run per output at a time (headrace locks each date anyway)
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
) as dag:
    embed = BashOperator(
        task_id="embed",
        bash_command=(
            f"{HEADRACE} submit pipelines/doc_embeddings.py --ds {{{{ ds }}}} "
            f"--conf input='s3://crawl/{{{{ ds }}}}/' --conf output={OUTPUT} --conf headrace.progress=false; "
            "code=$?; if [ $code -eq 3 ]; then exit 99; fi; exit $code"
        ),
        skip_on_exit_code=99,
    )
    data_quality_alert = BashOperator(
        task_id="data_quality_alert",
        bash_command="echo 'quality gate refused doc_embeddings ds={{ ds }}; see _FAILED in the staging folder' >&2",
        trigger_rule=TriggerRule.ALL_SKIPPED,
    )
    committed = BashSensor(
        task_id="committed",
        bash_command=f"{HEADRACE} status {OUTPUT} --ds {{{{ ds }}}}",
        poke_interval=60,
        timeout=6 * 60 * 60,
        mode="reschedule",
    )
    embed >> [data_quality_alert, committed]
