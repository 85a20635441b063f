"""rounds.wanted_at_close: the labels a round wanted when it left labeling

A closed round's "ratings wanted" (and "comparisons wanted") were counted from the accounts enabled today, so
enabling or disabling an account rewrote what the history said a closed round had wanted. They are recorded when the
round leaves labeling (db.repo.set_round_status, finish_experiment) and read from here. Rounds closed before this
revision keep NULL and are counted live, as before; so is a round open for labeling.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('rounds') as batch:
        batch.add_column(sa.Column('wanted_at_close', sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema: closed rounds are counted live again."""
    with op.batch_alter_table('rounds') as batch:
        batch.drop_column('wanted_at_close')
