"""Fine-tuning: jobs, their events and checkpoints; a training price per model.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prices") as batch:
        batch.add_column(sa.Column("training", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("training_file", sa.String(64), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fine_tuned_model", sa.String(256), nullable=True),
        sa.Column("model_path", sa.Text, nullable=True),
        sa.Column("model_deleted_at", sa.Float, nullable=True),
        sa.Column("epoch_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("trained_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_fine_tuning_jobs_account_id", "fine_tuning_jobs", ["account_id"])
    op.create_index("ix_fine_tuning_jobs_status", "fine_tuning_jobs", ["status", "created_at"])
    op.create_table(
        "fine_tuning_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=True),
    )
    op.create_index("ix_fine_tuning_events_job", "fine_tuning_events", ["job_id", "created_at"])
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("step_number", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
    )
    op.create_index("ix_fine_tuning_checkpoints_job", "fine_tuning_checkpoints", ["job_id", "created_at"])


def downgrade() -> None:
    for table in ("fine_tuning_checkpoints", "fine_tuning_events", "fine_tuning_jobs"):
        op.drop_table(table)
    with op.batch_alter_table("prices") as batch:
        batch.drop_column("training")
