"""experiment raters: an experiment open to every rater, or only to the accounts an admin lists

Any signed-in rater could fetch and rate any experiment with an open round. ``experiments.raters_limited`` (False:
every rater, the default) and the table ``experiment_raters`` (the accounts allowed when it is True) let an admin
say who rates which experiment (app.members; admins may rate every one). Experiments there at the upgrade stay open
to every rater.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('raters_limited', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('experiment_raters',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_raters_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_experiment_raters_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'rater_id', name=op.f('pk_experiment_raters'))
    )
    op.create_index(op.f('ix_experiment_raters_rater_id'), 'experiment_raters', ['rater_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema: every experiment is open to every rater again (the lists are dropped)."""
    op.drop_index(op.f('ix_experiment_raters_rater_id'), table_name='experiment_raters')
    op.drop_table('experiment_raters')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('raters_limited')
