"""undo steps for repeats: a repeat's score and a repeat's skip are on the rater's undo stack

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD = "action IN ('rate', 'skip')"
NEW = "action IN ('rate', 'skip', 'repeat', 'repeat_skip')"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('undo_steps', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_undo_steps_action'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_undo_steps_action'), sa.text(NEW))


def downgrade() -> None:
    """Downgrade schema: the repeats' undo steps go (the repeat scores and skips stay)."""
    op.execute("DELETE FROM undo_steps WHERE action IN ('repeat', 'repeat_skip')")
    with op.batch_alter_table('undo_steps', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_undo_steps_action'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_undo_steps_action'), sa.text(OLD))
