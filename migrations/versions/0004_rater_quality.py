"""rater quality: standardised scores setting, gold items, repeated items (issue 14, item 2)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('standardize_scores', sa.Boolean(), server_default=sa.false(), nullable=False))

    op.create_table('gold_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('score BETWEEN 1 AND 10', name=op.f('ck_gold_scores_score_range')),
    sa.ForeignKeyConstraint(['created_by'], ['raters.id'], name=op.f('fk_gold_scores_created_by_raters'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_gold_scores_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gold_scores')),
    sa.UniqueConstraint('image_id', name=op.f('uq_gold_scores_image_id'))
    )

    op.create_table('repeat_ratings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('score BETWEEN 1 AND 10', name=op.f('ck_repeat_ratings_score_range')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_repeat_ratings_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_repeat_ratings_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repeat_ratings')),
    sa.UniqueConstraint('image_id', 'rater_id', name=op.f('uq_repeat_ratings_image_id_rater_id'))
    )
    op.create_index(op.f('ix_repeat_ratings_rater_id'), 'repeat_ratings', ['rater_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_repeat_ratings_rater_id'), table_name='repeat_ratings')
    op.drop_table('repeat_ratings')
    op.drop_table('gold_scores')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('standardize_scores')
