"""image leases, server-side undo, experiment status and rater dashboard access (issue 13, items 4-5)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raters_see_dashboard', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table('image_leases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_leases_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_image_leases_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_leases')),
    sa.UniqueConstraint('image_id', 'rater_id', name=op.f('uq_image_leases_image_id_rater_id'))
    )
    op.create_index(op.f('ix_image_leases_rater_id'), 'image_leases', ['rater_id'], unique=False)

    op.create_table('undo_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('previous_score', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("action IN ('rate', 'skip')", name=op.f('ck_undo_steps_action')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_undo_steps_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_undo_steps_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_undo_steps'))
    )
    op.create_index(op.f('ix_undo_steps_rater_id'), 'undo_steps', ['rater_id', 'id'], unique=False)

    op.create_table('exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('round_index', sa.Integer(), nullable=True),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('file_path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("format IN ('diffusers', 'kohya', 'merged', 'ratings')", name=op.f('ck_exports_format')),
    sa.ForeignKeyConstraint(['created_by'], ['raters.id'], name=op.f('fk_exports_created_by_raters'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_exports_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exports'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('exports')
    op.drop_index(op.f('ix_undo_steps_rater_id'), table_name='undo_steps')
    op.drop_table('undo_steps')
    op.drop_index(op.f('ix_image_leases_rater_id'), table_name='image_leases')
    op.drop_table('image_leases')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('archived_at')
        batch_op.drop_column('raters_see_dashboard')
