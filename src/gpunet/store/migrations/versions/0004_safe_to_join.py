"""Safe to join: token expiry, use counts and revocation time; node isolation and runtimes;
per-attempt log accounting

Revision ID: 0004_safe_to_join
Revises: 0003_lifecycle
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_safe_to_join"
down_revision = "0003_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as b:
        b.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("uses_left", sa.Integer(), nullable=True))
        b.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("nodes") as b:
        # nodes known before isolation was reported ran jobs bare
        b.add_column(sa.Column("isolation", sa.String(20), nullable=False, server_default="none"))
        b.add_column(sa.Column("runtimes", sa.JSON(), nullable=False, server_default="[]"))
        # they ran everyone's jobs, as before
        b.add_column(
            sa.Column("accepts_unisolated", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        b.add_column(
            sa.Column("log_truncated", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("log_truncated")
        b.drop_column("log_bytes")
    with op.batch_alter_table("nodes") as b:
        b.drop_column("accepts_unisolated")
        b.drop_column("runtimes")
        b.drop_column("isolation")
    with op.batch_alter_table("tokens") as b:
        b.drop_column("last_used_at")
        b.drop_column("uses_left")
        b.drop_column("expires_at")
        b.drop_column("revoked_at")
