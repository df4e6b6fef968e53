"""The Jinja2 templates every page renders with (apart from `web`, so routers and the app share them
without importing each other)."""
from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
