"""jobs.claims: a claim counter that fences a worker's writes

A worker's writes to its job (heartbeat, progress, result, failure, hand-back) were checked against the worker id and
the attempt number its claim returned. Attempt numbers repeat: an admin's retry sets them back to 0 and a job that
gives way takes its attempt back, so a worker whose claim an admin had stopped could still store its result under
the claim of a worker with the same id (``--worker-id`` given twice) that took the retried job. Every claim now adds
one to ``claims``, which nothing lowers, and the writes are checked against it (db.jobs). Jobs there at the upgrade
start from their attempt count.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('claims', sa.Integer(), server_default='0', nullable=False))
    op.execute("UPDATE jobs SET claims = attempts")


def downgrade() -> None:
    """Downgrade schema: the writes are checked against the attempt number again."""
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('claims')
