"""Gangs: one job on several nodes (member attempts with a rank), nodes' advertise addresses

Revision ID: 0011_gangs
Revises: 0010_replicas
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_gangs"
down_revision = "0010_replicas"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("advertise_addr", sa.String(255), nullable=True))
        b.add_column(sa.Column("rendezvous_ports", sa.String(20), nullable=True))
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("rank", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("gang_size", sa.Integer(), nullable=False, server_default="1"))
        b.add_column(sa.Column("master_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("master_port")
        b.drop_column("gang_size")
        b.drop_column("rank")
    with op.batch_alter_table("nodes") as b:
        b.drop_column("rendezvous_ports")
        b.drop_column("advertise_addr")
