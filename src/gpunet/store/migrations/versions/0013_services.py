"""Services: replicas behind the gateway; replica jobs name their service, attempts their
readiness, service keys their service

Revision ID: 0013_services
Revises: 0012_arrays
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_services"
down_revision = "0012_arrays"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decisions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_index("ix_services_state", "services", ["state"])
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("service_id", sa.String(40), nullable=True))
        b.create_index("ix_jobs_service_id", ["service_id"])
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("ready", sa.Boolean(), nullable=True))
    with op.batch_alter_table("tokens") as b:
        b.add_column(sa.Column("service_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as b:
        b.drop_column("service_id")
    with op.batch_alter_table("attempts") as b:
        b.drop_column("ready")
    with op.batch_alter_table("jobs") as b:
        b.drop_index("ix_jobs_service_id")
        b.drop_column("service_id")
    op.drop_index("ix_services_state", "services")
    op.drop_table("services")
