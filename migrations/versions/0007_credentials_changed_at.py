"""raters.credentials_changed_at: when the password last changed or the account was last disabled or enabled

The sign-in throttle's exemptions are tied to a stamp of the account's credentials (app.auth.credentials_stamp); with
this column in it, an account disabled and enabled again by another process does not get its old exemptions back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('raters') as batch:
        batch.add_column(sa.Column('credentials_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('raters') as batch:
        batch.drop_column('credentials_changed_at')
