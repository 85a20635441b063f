"""live processes: a running server or worker leaves a row that `db downgrade` sees

A running job's lease was the only mark of a live process in the database: a server, or a worker between jobs, left
none, so `db downgrade` could only warn that it could not see them. Each server and worker now registers a row in
``live_processes`` (kind, host name, pid, started_at) at its start, refreshes its ``heartbeat_at`` every 15 s and
removes it at a clean exit (``db.presence``); `db downgrade` refuses while a row's heartbeat is fresh. The downgrade
drops the table: the code of 0015 and before keeps no such rows.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('live_processes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('server', 'worker')", name=op.f('ck_live_processes_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_live_processes'))
    )


def downgrade() -> None:
    """Downgrade schema: the rows of live processes are dropped (`db downgrade` checked them first)."""
    op.drop_table('live_processes')
