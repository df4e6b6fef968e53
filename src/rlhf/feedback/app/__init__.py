"""The human-feedback labeling web app: FastAPI + SQLAlchemy, server-rendered pages."""
from rlhf.feedback.app.web import create_app

__all__ = ["create_app"]
