"""raters.role_version: how many times the account's role changed

The page's "not an admin" flag kept the role of the answer to the request it sent last, but the events of one pick
leave together and the server reads each one's role on its own: one sent later could be read before a demotion and
clear the flag an earlier one's refusal (read after it) had set. The server now says with each answer that carries a
role the account's role version, read with the role, and the page keeps the role of the newest version
(app.ui_assets STREAMS_JS). Existing accounts start at 0.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0018'
down_revision: Union[str, Sequence[str], None] = '0017'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('raters') as batch:
        batch.add_column(sa.Column('role_version', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('raters') as batch:
        batch.drop_column('role_version')
