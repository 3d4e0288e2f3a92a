"""Topics lookup table with seed rows, and an index for listing a user's threads.

What migrations typically add beyond the models: the ``threads``/``messages`` tables already
exist (the plugin creates the ThreadSchema's tables before the setup hook runs).

Revision ID: 0001_topics
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_topics"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    topics = op.create_table(
        "topics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
    )
    op.bulk_insert(topics, [{"id": 1, "name": "billing"}, {"id": 2, "name": "support"}])
    op.create_index("ix_threads_user_id_created_at", "threads", ["user_id", "created_at"])


def downgrade():
    op.drop_index("ix_threads_user_id_created_at", table_name="threads")
    op.drop_table("topics")
