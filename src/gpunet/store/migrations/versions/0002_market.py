"""market: prices on GPUs, the double-entry ledger, attempt charges, account quotas

Revision ID: 0002_market
Revises: 0001
"""

from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision = "0002_market"
down_revision = "0001"
branch_labels = None
depends_on = None


def _money() -> sa.Numeric[Decimal]:
    # exact on both stores: NUMERIC on PostgreSQL, whole micro-units on SQLite
    return sa.Numeric(20, 6).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("gpus") as b:
        b.add_column(sa.Column("price_per_hour", _money(), nullable=True))
        b.add_column(sa.Column("min_interruptible_price", _money(), nullable=True))
    op.create_table(
        "ledger_txns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("attempt_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref"),
    )
    op.create_index("ix_ledger_txns_attempt_id", "ledger_txns", ["attempt_id"])
    op.create_table(
        "ledger_postings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("txn_id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=120), nullable=False),
        sa.Column("amount", _money(), nullable=False),
        sa.ForeignKeyConstraint(["txn_id"], ["ledger_txns.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ledger_postings_txn_id", "ledger_postings", ["txn_id"])
    op.create_index("ix_ledger_postings_account", "ledger_postings", ["account"])
    op.create_table(
        "attempt_charges",
        sa.Column("attempt_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("payer_account_id", sa.String(length=40), nullable=False),
        sa.Column("owner_account_id", sa.String(length=40), nullable=False),
        sa.Column("node_id", sa.String(length=40), nullable=False),
        sa.Column("gpu_prices", sa.JSON(), nullable=False),
        sa.Column("rate_per_hour", _money(), nullable=False),
        sa.Column("fee_rate", _money(), nullable=False),
        sa.Column("held", _money(), nullable=False),
        sa.Column("billed_seconds", sa.Integer(), nullable=False),
        sa.Column("charged", _money(), nullable=False),
        sa.Column("owner_share", _money(), nullable=False),
        sa.Column("fee", _money(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempts.id"]),
        sa.PrimaryKeyConstraint("attempt_id"),
    )
    op.create_index("ix_attempt_charges_job_id", "attempt_charges", ["job_id"])
    op.create_index("ix_attempt_charges_payer_account_id", "attempt_charges", ["payer_account_id"])
    op.create_index("ix_attempt_charges_owner_account_id", "attempt_charges", ["owner_account_id"])
    op.create_table(
        "account_quotas",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("max_concurrent_gpus", sa.Integer(), nullable=True),
        sa.Column("monthly_spend", _money(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    op.drop_table("account_quotas")
    op.drop_table("attempt_charges")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_txns")
    with op.batch_alter_table("gpus") as b:
        b.drop_column("min_interruptible_price")
        b.drop_column("price_per_hour")
