"""What one user's uploads may hold on the server, counted over all their open chats.

Chainlit keeps each file sent to POST /project/file under `.files/<session>/` until the chat's
session ends, and checks only its type and size there: the number of files and their total are
left to the browser (`max_files`), so a script can store as many as it likes. Uploads are
counted here per user, the ones still being received included (the browser sends several
files at once), and refused with a message naming the limit reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import chainlit.server as chainlit_server
from chainlit.config import config as chainlit_config
from chainlit.server import UserParam
from chainlit.session import WebsocketSession, ws_sessions_id
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile  # what a parsed form holds

from ragchat.config import Settings

MB = 1024 * 1024


class UploadRefused(Exception):
    """An upload over a limit; the message says which one and what to do, for the user."""


# What a multipart form adds around one file at most (boundaries, its name, its type).
FORM_OVERHEAD = 4096


@dataclass(eq=False)
class Hold:
    """Room held for a file while it is received: the request's size until the file's is known."""

    user: str
    size: int


@dataclass
class UploadQuota:
    max_files: int  # UPLOAD_MAX_FILES
    max_mb: int  # UPLOAD_QUOTA_MB
    file_max_mb: int  # UPLOAD_MAX_MB, which Chainlit checks too, but only once it has the file
    # The upload ids recorded per session; a session that Chainlit deletes drops out.
    _uploads: WeakKeyDictionary = field(default_factory=WeakKeyDictionary)
    _holds: list[Hold] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadQuota:
        return cls(settings.upload_max_files, settings.upload_quota_mb, settings.upload_max_mb)

    @contextmanager
    def receiving(self, user: str, request_size: int) -> Iterator[Hold]:
        """Hold room for a request of `request_size` bytes while its file is received and
        stored; UploadRefused when there is none. Checking and holding run with no await
        between them, so uploads received at the same time cannot all take the last place."""
        self._refuse_if_over(user, max(0, request_size - FORM_OVERHEAD), another_file=True)
        hold = Hold(user, request_size)
        self._holds.append(hold)
        try:
            yield hold
        finally:
            self._holds.remove(hold)

    def received(self, hold: Hold, file_size: int) -> None:
        """The file's exact size, now that it is read; UploadRefused if it does not fit."""
        hold.size = 0
        self._refuse_if_over(hold.user, file_size, another_file=False)  # already counted
        hold.size = file_size

    def _refuse_if_over(self, user: str, size: int, another_file: bool) -> None:
        if size > self.file_max_mb * MB:
            raise UploadRefused(
                f"this file is {size / MB:.1f} MB and one upload may be at most "
                f"{self.file_max_mb} MB (UPLOAD_MAX_MB)"
            )
        files, used = self._held_by(user)
        if another_file and files >= self.max_files:
            raise UploadRefused(
                f"your open chats already hold {files} uploaded files, the most allowed "
                f"(UPLOAD_MAX_FILES). {self._what_to_do()}"
            )
        if used + size > self.max_mb * MB:
            raise UploadRefused(
                f"this file ({size / MB:.1f} MB) would bring your uploads in open chats to "
                f"{(used + size) / MB:.1f} MB, over the {self.max_mb} MB allowed "
                f"(UPLOAD_QUOTA_MB). {self._what_to_do()}"
            )

    def record(self, session: WebsocketSession, file_id: str) -> None:
        """Count a file Chainlit stored for an upload in this session."""
        self._uploads.setdefault(session, set()).add(file_id)

    def _held_by(self, user: str) -> tuple[int, int]:
        """(files, bytes) of the user's uploads: stored in their open sessions, or arriving
        (counted at the size held for them)."""
        stored = [
            session.files[file_id]["size"]
            for session in list(ws_sessions_id.values())
            if session.user is not None and session.user.identifier == user
            for file_id in self._uploads.get(session, ())
            if file_id in session.files
        ]
        arriving = [hold.size for hold in self._holds if hold.user == user]
        return len(stored) + len(arriving), sum(stored) + sum(arriving)

    def _what_to_do(self) -> str:
        minutes = max(1, round(chainlit_config.project.session_timeout / 60))
        return (
            f"A chat's uploads are cleared {minutes} min after it is closed: close chats you no "
            "longer need, or ask an administrator to raise the limit."
        )


def upload_within_quota(quota: UploadQuota):
    """Chainlit's POST /project/file, once the user's uploads have room for this one. The
    request's stated size is checked before its body is read."""

    async def upload_file(
        request: Request,
        session_id: str,
        current_user: UserParam,
        ask_parent_id: str | None = None,
    ) -> JSONResponse:
        session = WebsocketSession.get_by_id(session_id)
        user = current_user.identifier
        if session is None or session.user is None or session.user.identifier != user:
            raise HTTPException(status_code=404, detail="Session not found")
        size = request.headers.get("content-length", "")
        if not size.isdigit():  # browsers always state it; uvicorn reads no further than it
            raise HTTPException(status_code=411, detail="The upload must state its size.")
        try:
            with quota.receiving(user, int(size)) as hold:
                async with request.form(max_files=1) as form:
                    file = form.get("file")
                    if not isinstance(file, UploadFile):
                        raise HTTPException(status_code=400, detail="The upload holds no file.")
                    quota.received(hold, file.size or 0)
                    stored = await chainlit_server.upload_file(
                        current_user, session_id, file, ask_parent_id
                    )
                quota.record(session, json.loads(stored.body)["id"])
        except UploadRefused as refusal:
            raise HTTPException(status_code=413, detail=f"Upload refused: {refusal}") from None
        return stored

    return upload_file
