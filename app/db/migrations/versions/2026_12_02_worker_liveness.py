"""worker_processes: a heartbeat per worker process, and who holds a fetch or a chunk

Revision ID: 2026_12_02_worker_liveness
Revises: 2026_12_02_fetch_segments
Create Date: 2026-12-02

Every worker process that runs tasks beats here every few seconds (workers/liveness.py).
A fetch lease (`runs.fetch_holder`) and a chunk delivery (`raw_chunks.claimed_by`) name
the process that took them, so the reconciler re-drives the work of a dead worker as soon
as its heartbeat stops, instead of after TASK_TIMEOUT_S.
"""

from alembic import op

revision = "2026_12_02_worker_liveness"
down_revision = "2026_12_02_fetch_segments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE worker_processes (
            id uuid PRIMARY KEY,
            hostname text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            beat_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("ALTER TABLE runs ADD COLUMN fetch_holder uuid")
    op.execute("ALTER TABLE raw_chunks ADD COLUMN claimed_by uuid")


def downgrade() -> None:
    op.execute("ALTER TABLE raw_chunks DROP COLUMN claimed_by")
    op.execute("ALTER TABLE runs DROP COLUMN fetch_holder")
    op.execute("DROP TABLE worker_processes")
