"""Security: hashed session tokens, disabled users, per-project media roots.

Revision ID: 0002
Revises: 0001

Existing sessions keep working: their tokens are replaced by SHA-256 hashes of the tokens.
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    bind = op.get_bind()
    old = bind.execute(sa.text("SELECT token, user_id, csrf_token, expires_at FROM sessions")).all()
    op.drop_table("sessions")
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=True),
    )
    for row in old:  # raw SQL: the stored timestamps go back exactly as they came out
        bind.execute(sa.text("INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at) "
                             "VALUES (:token_hash, :user_id, :csrf_token, :expires_at)"),
                     {"token_hash": hashlib.sha256(row.token.encode()).hexdigest(), "user_id": row.user_id,
                      "csrf_token": row.csrf_token, "expires_at": row.expires_at})
    # Plain ADD COLUMN (no table rebuild: rebuilding "users" would cascade-delete rows that refer to it)
    op.add_column("users", sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("projects", sa.Column("media_root", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "media_root")  # SQLite >= 3.35 drops columns in place (no rebuild)
    op.drop_column("users", "disabled")
    op.drop_table("sessions")  # hashes cannot be turned back into tokens: everyone logs in again
    op.create_table(
        "sessions",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
