"""undo_steps.skipped_at: a new score that took back a skip records when that skip was made

Undoing a new score that had taken back a skip of the image found the skip by its own undo step, right below the
score's; the history keeps a rater's newest 200 steps (db.repo.UNDO_KEEP), so once the skip's step was dropped, the
undo removed the score with the skip lost and the image was offered again. The score's step now records the skip
(its time; a repeat's skip, which keeps no time, the score's). Steps from before this revision keep NULL and are
undone as before, by the skip step below them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('undo_steps') as batch:
        batch.add_column(sa.Column('skipped_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema: undo finds a taken-back skip by its own step again."""
    with op.batch_alter_table('undo_steps') as batch:
        batch.drop_column('skipped_at')
