"""comparisons (blind A/B pairs, pairwise preferences) and round lineage for rollback (issue 14, items 1 and 3)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_round_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_rounds_parent_round_id_rounds'), 'rounds', ['parent_round_id'], ['id'],
                                    ondelete='CASCADE')

    op.create_table('comparison_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('image_a_id', sa.Integer(), nullable=False),
    sa.Column('image_b_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('ab', 'preference')", name=op.f('ck_comparison_pairs_kind')),
    sa.CheckConstraint('image_a_id <> image_b_id', name=op.f('ck_comparison_pairs_distinct_images')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_comparison_pairs_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_a_id'], ['images.id'], name=op.f('fk_comparison_pairs_image_a_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_b_id'], ['images.id'], name=op.f('fk_comparison_pairs_image_b_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_comparison_pairs_round_id_rounds'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparison_pairs'))
    )
    op.create_index(op.f('ix_comparison_pairs_experiment_id'), 'comparison_pairs', ['experiment_id', 'kind', 'round_id'], unique=False)

    op.create_table('comparison_votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('choice', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("choice IN ('a', 'b', 'tie')", name=op.f('ck_comparison_votes_choice')),
    sa.ForeignKeyConstraint(['pair_id'], ['comparison_pairs.id'], name=op.f('fk_comparison_votes_pair_id_comparison_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_comparison_votes_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparison_votes')),
    sa.UniqueConstraint('pair_id', 'rater_id', name=op.f('uq_comparison_votes_pair_id_rater_id'))
    )
    op.create_index(op.f('ix_comparison_votes_rater_id'), 'comparison_votes', ['rater_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_comparison_votes_rater_id'), table_name='comparison_votes')
    op.drop_table('comparison_votes')
    op.drop_index(op.f('ix_comparison_pairs_experiment_id'), table_name='comparison_pairs')
    op.drop_table('comparison_pairs')
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_rounds_parent_round_id_rounds'), type_='foreignkey')
        batch_op.drop_column('parent_round_id')
