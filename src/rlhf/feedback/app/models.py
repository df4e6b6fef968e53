"""Tables of the labeling app. JSON columns keep per-response lists (ratings, ranks, flags) in the
task's original response order, so a label never depends on the order it was shown in."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)  # also unique ignoring case (migration 0003)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # "admin" | "annotator"
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)  # a disabled user cannot log in
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class LoginSession(Base):
    """Server-side session. The cookie holds a random token; the table holds only its SHA-256
    (`token_hash`), so a copy of the database does not let anyone log in. Logout, expiry, a
    password change, revocation or disabling the user deletes the row."""
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    user: Mapped[User] = relationship(lazy="joined")


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # distinct annotators per task
    gold_fraction: Mapped[float] = mapped_column(Float, default=0.0)  # share of served tasks that are gold
    batch_size: Mapped[int] = mapped_column(Integer, default=10)  # tasks handed out at once
    # Bumped by every allocation: the UPDATE takes a row/write lock that serializes allocators.
    allocations: Mapped[int] = mapped_column(Integer, default=0)
    # Local media of the project's tasks are files under this folder (None: only http(s) URLs).
    media_root: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="text")  # text | image | video
    prompt: Mapped[list] = mapped_column(JSON)  # [{"role", "content"}, ...]
    responses: Mapped[list] = mapped_column(JSON)  # strings: text, or media paths/URLs
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_ranks: Mapped[list | None] = mapped_column(JSON, nullable=True)
    project: Mapped[Project] = relationship()


class Assignment(Base):
    """One task handed to one annotator; `shown_order` is the permutation their page displayed."""
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    shown_order: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | done | skipped
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    task: Mapped[Task] = relationship(lazy="joined")
    user: Mapped[User] = relationship()
    label: Mapped["Label | None"] = relationship(back_populates="assignment", uselist=False)


class Label(Base):
    """The answer to an assignment; unique per assignment, which makes a resubmit a no-op."""
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    ranks: Mapped[list | None] = mapped_column(JSON, nullable=True)  # original response order
    ratings: Mapped[list | None] = mapped_column(JSON, nullable=True)  # Likert 1..7, original order
    flags: Mapped[list | None] = mapped_column(JSON, nullable=True)  # one dict per response
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    assignment: Mapped[Assignment] = relationship(back_populates="label")
