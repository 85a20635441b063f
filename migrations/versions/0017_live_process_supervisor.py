"""live processes: the supervisor of `python -m app worker --processes N` keeps a row too (kind 'supervisor')

Each rank of a worker run as N processes kept its row in ``live_processes``, but the parent that starts the ranks and
restarts them when one ends kept none: between two groups (a rank crashed, the others stopped, a fresh group not yet
started) `db downgrade` saw nothing live and ran under a supervisor that was alive and about to start ranks against
the downgraded schema. The supervisor now registers a row of its own before it starts a rank and removes it at a clean exit
(``app.train_dist.run_supervisor``); the kind's CHECK takes 'supervisor'. The downgrade deletes the supervisors' rows
(stale ones: `db downgrade` refuses while a fresh row is there) and restores the CHECK of 0016.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0017'
down_revision: Union[str, Sequence[str], None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD = "kind IN ('server', 'worker')"
NEW = "kind IN ('server', 'worker', 'supervisor')"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('live_processes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_live_processes_kind'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_live_processes_kind'), sa.text(NEW))


def downgrade() -> None:
    """Downgrade schema: the supervisors' rows go (the code of 0016 keeps none)."""
    op.execute("DELETE FROM live_processes WHERE kind = 'supervisor'")
    with op.batch_alter_table('live_processes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_live_processes_kind'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_live_processes_kind'), sa.text(OLD))
