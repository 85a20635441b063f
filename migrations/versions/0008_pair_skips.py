"""pair skips: a rater sets a comparison pair aside (it is not offered to them again and counts nowhere)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('pair_skips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pair_id'], ['comparison_pairs.id'], name=op.f('fk_pair_skips_pair_id_comparison_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_pair_skips_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pair_skips')),
    sa.UniqueConstraint('pair_id', 'rater_id', name=op.f('uq_pair_skips_pair_id_rater_id'))
    )
    op.create_index(op.f('ix_pair_skips_rater_id'), 'pair_skips', ['rater_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_pair_skips_rater_id'), table_name='pair_skips')
    op.drop_table('pair_skips')
