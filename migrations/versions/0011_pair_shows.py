"""pair shows: the comparison pairs put on a rater's screen

A blind A/B pair on a rater's screen did not count as met until they voted on it or skipped it, so a pair added
meanwhile (a new round's eval grid) could be offered next with one of its images, always the old side. A pair is now
recorded when it is shown; a shown pair not yet answered is offered to the rater again and its images count as met
(db.comparisons). Before this revision nothing was recorded: pairs on screen at the upgrade count from their next
showing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('pair_shows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pair_id'], ['comparison_pairs.id'], name=op.f('fk_pair_shows_pair_id_comparison_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_pair_shows_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pair_shows')),
    sa.UniqueConstraint('pair_id', 'rater_id', name=op.f('uq_pair_shows_pair_id_rater_id'))
    )
    op.create_index(op.f('ix_pair_shows_rater_id'), 'pair_shows', ['rater_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema: what was shown is forgotten (a pair on screen counts as met once answered, as before)."""
    op.drop_index(op.f('ix_pair_shows_rater_id'), table_name='pair_shows')
    op.drop_table('pair_shows')
