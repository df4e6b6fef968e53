"""Usernames are unique ignoring case: a unique index on lower(username).

Revision ID: 0003
Revises: 0002

A database that already holds usernames differing only in case (possible before this revision)
is not changed: the upgrade stops and names them, so whoever runs the server decides which
account keeps the name (the old ones keep working until then).
"""
import sqlalchemy as sa
from alembic import op

from rlhf.errors import RLHFError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    names = [row.username for row in bind.execute(sa.text("SELECT username FROM users ORDER BY id"))]
    seen: dict[str, list[str]] = {}
    for name in names:
        seen.setdefault(name.lower(), []).append(name)
    clashes = [group for group in seen.values() if len(group) > 1]
    if clashes:
        listed = "; ".join(", ".join(repr(n) for n in group) for group in clashes)
        raise RLHFError(f"usernames must now be unique ignoring case, and these differ only in case: {listed}. "
                        "Rename all but one of each group (e.g. UPDATE users SET username = 'alice2' WHERE "
                        "username = 'Alice'), then start again")
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_username_lower", table_name="users")
