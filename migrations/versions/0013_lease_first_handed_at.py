"""image_leases.first_handed_at: when an image was first handed to the rater

A rater's cards left open come back in the order they were first handed out (app.repeats.left_open): an ordinary
card by its lease's grant (``created_at``), a repeat by its offer. A lease that ran out ``RESERVE_S`` (30 minutes)
before it is taken again starts a new grant, so a card left open that long moved behind the repeats handed out with
it: a card coming back ahead of its batch's other cards was a repeat. ``first_handed_at`` is set when the row is
written and never changed; the order uses it. Rows there at the upgrade get their grant time, the best record there
is (a lease granted anew before the upgrade keeps its later time).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('image_leases') as batch:
        batch.add_column(sa.Column('first_handed_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE image_leases SET first_handed_at = created_at")
    with op.batch_alter_table('image_leases') as batch:
        batch.alter_column('first_handed_at', existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    """Downgrade schema: cards left open are ordered by their lease's grant again."""
    with op.batch_alter_table('image_leases') as batch:
        batch.drop_column('first_handed_at')
