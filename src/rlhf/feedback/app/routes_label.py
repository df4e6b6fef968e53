"""Annotator pages and API: project list, next task, labeling page, submit, skip, media."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.deps import MAX_ID, csrf_session, current_session, get_db
from rlhf.feedback.app.media import MEDIA_CSP, MEDIA_TYPES, MediaError, is_url, resolve_media
from rlhf.feedback.app.models import Assignment, LoginSession, Project, Task
from rlhf.feedback.app.projects import FLAGS, BadLabel, get_project, next_assignment, progress, submit
from rlhf.feedback.app.templating import templates

router = APIRouter()
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Index = Annotated[int, Path(ge=0, le=MAX_ID)]


def _project(db: Session, name: str) -> Project:
    try:
        return get_project(db, name)
    except RLHFError as exc:
        raise HTTPException(404, str(exc)) from None


def own_assignment(db: Session, assignment_id: int, session: LoginSession) -> Assignment:
    """The assignment, if it is this user's: annotators never see each other's work (403)."""
    assignment = db.get(Assignment, assignment_id)
    if assignment is None:
        raise HTTPException(404, "no such assignment")
    if assignment.user_id != session.user_id:
        raise HTTPException(403, "this task is assigned to someone else")
    return assignment


@router.get("/projects")
def project_list(request: Request, session: LoginSession = Depends(current_session),
                 db: Session = Depends(get_db)) -> Response:
    projects = db.scalars(select(Project).order_by(Project.name)).all()
    rows = [(p, progress(db, p, session.user)) for p in projects]
    return templates.TemplateResponse(request, "projects.html", {"session": session, "rows": rows})


def _next_url(db: Session, project: Project, session: LoginSession) -> str | None:
    assignment = next_assignment(db, project, session.user)
    return None if assignment is None else f"/assignments/{assignment.id}"


@router.post("/projects/{name}/next")
def next_page(name: str, request: Request, session: LoginSession = Depends(csrf_session),
              db: Session = Depends(get_db)) -> Response:
    project = _project(db, name)
    url = _next_url(db, project, session)
    if url is None:
        done = progress(db, project, session.user)
        return templates.TemplateResponse(request, "message.html", {
            "session": session, "title": "All done",
            "message": f"No more tasks in {project.name} for you: {done.done} of {done.assigned} answered. Thank you!"})
    return RedirectResponse(url, status_code=303)


@router.post("/api/projects/{name}/next")
def next_api(name: str, session: LoginSession = Depends(csrf_session), db: Session = Depends(get_db)) -> dict:
    project = _project(db, name)
    url = _next_url(db, project, session)
    done = progress(db, project, session.user)
    assignment_id = None if url is None else int(url.rsplit("/", 1)[1])
    return {"assignment_id": assignment_id, "url": url, "done": done.done, "assigned": done.assigned}


@router.get("/assignments/{assignment_id}")
def label_page(assignment_id: Id, request: Request, session: LoginSession = Depends(current_session),
               db: Session = Depends(get_db)) -> Response:
    assignment = own_assignment(db, assignment_id, session)
    task = assignment.task
    shown = [{"index": i, "letter": chr(ord("A") + pos), "content": task.responses[i],
              "media_url": _media_url(task, i)} for pos, i in enumerate(assignment.shown_order)]
    if task.kind == "clip":  # a pair of trajectory clips: left / right / equal / can't tell
        for r in shown:
            r["video"] = MEDIA_TYPES.get(PurePosixPath(r["content"].split("?")[0]).suffix.lower(),
                                         "").startswith("video/")
        return templates.TemplateResponse(request, "clip.html", {
            "session": session, "assignment": assignment, "task": task, "project": task.project, "left": shown[0],
            "right": shown[1], "progress": progress(db, task.project, session.user)})
    return templates.TemplateResponse(request, "label.html", {
        "session": session, "assignment": assignment, "task": task, "project": task.project, "shown": shown,
        "progress": progress(db, task.project, session.user), "flags": FLAGS, "k": len(shown)})


def _media_url(task: Task, index: int) -> str | None:
    if task.kind == "text":
        return None
    ref = task.responses[index]
    return ref if is_url(ref) else f"/media/{task.id}/{index}"


@router.get("/media/{task_id}/{index}")
def media(task_id: Id, index: Index, request: Request, session: LoginSession = Depends(current_session),
          db: Session = Depends(get_db)) -> Response:
    """A local media file named by a task; only for admins and annotators assigned that task, and
    only if it obeys the media-root rule now (media.py), whatever was imported before."""
    task = db.get(Task, task_id)
    if task is None or task.kind == "text" or not 0 <= index < len(task.responses):
        raise HTTPException(404, "no such media")
    if not session.user.is_admin and db.scalar(select(Assignment.id).where(
            Assignment.task_id == task_id, Assignment.user_id == session.user_id)) is None:
        raise HTTPException(403, "this task is not assigned to you")
    ref = task.responses[index]
    if is_url(ref):
        raise HTTPException(404, "this media is a URL, not a file on this server")
    try:
        path = resolve_media(task.project.media_root, ref, request.app.state.database_files)
    except MediaError:
        raise HTTPException(404, "no such media file under the project's media root") from None
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()], filename=path.name,
                        content_disposition_type="attachment",
                        headers={"Content-Security-Policy": MEDIA_CSP, "Cross-Origin-Resource-Policy": "same-origin"})


def _answer(db: Session, assignment: Assignment, **answer) -> dict:
    try:
        stored = submit(db, assignment, **answer)
    except BadLabel as exc:
        raise HTTPException(422, str(exc)) from None
    return {"stored": stored, "status": assignment.status, "project": assignment.task.project.name}


@router.post("/api/assignments/{assignment_id}/label")
def submit_label(assignment_id: Id, payload: dict = Body(...), session: LoginSession = Depends(csrf_session),
                 db: Session = Depends(get_db)) -> dict:
    """Body: {"ranks": [...], "ratings": [...], "flags": [{...}, ...]} in original response order.
    Answering twice is harmless: the second answer reports stored=false and changes nothing."""
    assignment = own_assignment(db, assignment_id, session)
    return _answer(db, assignment, ranks=payload.get("ranks"), ratings=payload.get("ratings"),
                   flags=payload.get("flags"))


@router.post("/api/assignments/{assignment_id}/skip")
def skip(assignment_id: Id, payload: dict = Body(...), session: LoginSession = Depends(csrf_session),
         db: Session = Depends(get_db)) -> dict:
    assignment = own_assignment(db, assignment_id, session)
    reason = payload.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise HTTPException(422, "a skip needs a reason")
    return _answer(db, assignment, skip_reason=reason)

