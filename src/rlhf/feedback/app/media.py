"""Local media of image/video/audio tasks: the media-root rule and the types the app serves.

Rule: a project's local media are files under its media root, a folder chosen by whoever runs the
server when the project is created (`rlhf label create-project --media-root DIR`) or on its first
import (`rlhf label import --media-root DIR`); it cannot be set from the web pages. A task names a
file by a path relative to the root (an absolute path is accepted only if it lies inside it). The
path is resolved, symlinks included, and must stay inside the root, be a regular file with one of
the extensions in MEDIA_TYPES, and not be one of the app's own database files; this is checked at
import and again every time the file is served. Files are served as attachments with their fixed
type from MEDIA_TYPES, `X-Content-Type-Options: nosniff` and a sandboxing Content-Security-Policy,
so nothing served from /media can run as a page or a script in the app's origin.
"""
from __future__ import annotations

import os
from pathlib import Path

from rlhf.errors import RLHFError
from rlhf.feedback.app.db import DatabaseFileGuard

# What a labeling page needs: images (GIF clips included), video and audio. Never HTML, SVG,
# JavaScript or anything else a browser could run.
MEDIA_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".m4a": "audio/mp4",
    ".flac": "audio/flac",
}
MEDIA_CSP = "default-src 'none'; sandbox"


class MediaError(ValueError):
    """A media reference that breaks the media-root rule (the message says which part)."""


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def check_media_root(folder: str | os.PathLike) -> str:
    """The absolute, resolved media root, or RLHFError naming what is wrong with it."""
    try:
        root = Path(folder).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        raise RLHFError(f"media root {str(folder)!r} does not exist") from None
    if not root.is_dir():
        raise RLHFError(f"media root {str(folder)!r} is not a folder")
    if root == Path(root.anchor):
        raise RLHFError("the media root cannot be the file system root: choose the folder that holds the media")
    return str(root)


def resolve_media(root: str | None, ref: str, guard: DatabaseFileGuard) -> Path:
    """The file a task's media reference names, after every check of the media-root rule."""
    if root is None:
        raise MediaError("local media files need a media root for the project "
                         "(rlhf label create-project/import --media-root DIR); or use an http(s) URL")
    if not ref or "\0" in ref:
        raise MediaError("empty or invalid media path")
    base = Path(root).resolve()
    # Containment first, existence second: a path outside the root gets the same answer whether or
    # not it exists, so import errors cannot be used to probe the server's files.
    outside = MediaError(f"media path {ref!r} leads outside the media root")
    if not Path(os.path.normpath(base / ref)).is_relative_to(base):
        raise outside
    try:
        path = (base / ref).resolve()  # symlinks followed as far as they exist
    except (OSError, RuntimeError):  # a symlink loop
        raise outside from None
    if not path.is_relative_to(base):
        raise outside
    try:
        path.stat()
    except OSError:
        raise MediaError(f"media file {ref!r} not found under the media root") from None
    if not path.is_file():
        raise MediaError(f"media path {ref!r} is not a regular file")
    if path.suffix.lower() not in MEDIA_TYPES:
        raise MediaError(f"media file {ref!r} is not an allowed type "
                         f"({', '.join(sorted(MEDIA_TYPES))})")
    if path in guard:
        raise MediaError(f"media path {ref!r} is one of the app's database files")
    return path
