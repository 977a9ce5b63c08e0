"""Billing: balances, prices, the ledger, holds, replicas, limits, daily usage.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer, nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer, nullable=True))
        batch.add_column(sa.Column("budget", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "prices",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("input", sa.BigInteger, nullable=False),
        sa.Column("cached_input", sa.BigInteger, nullable=False),
        sa.Column("output", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "account_model_limits",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_ledger_account_id", "ledger_entries", ["account_id", "id"])
    op.create_index("ix_ledger_entries_request_id", "ledger_entries", ["request_id"])
    op.create_table(
        "holds",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("max_tokens", sa.Integer, nullable=False),
        sa.Column("price_input", sa.BigInteger, nullable=False),
        sa.Column("price_cached_input", sa.BigInteger, nullable=False),
        sa.Column("price_output", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_holds_state", "holds", ["state"])
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("usage_daily", "replicas", "holds", "ledger_entries", "account_model_limits", "prices"):
        op.drop_table(table)
    with op.batch_alter_table("api_keys") as batch:
        for col in ("held", "spent", "budget", "concurrency", "tpm", "rpm"):
            batch.drop_column(col)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("balance")
