"""HTTP routes added to Chainlit's server for chat history: element files served to their
owner only, and owner checks where Chainlit's own routes have none.

Chainlit checks that a thread is yours before showing, renaming or deleting it (answering
another's thread unlike an unknown one, so the thread routes are taken over to answer both
alike), but not before writing or deleting feedback (any step or feedback id will do), and it
lets a thread be shared with anyone, signed in or not. Those routes are taken over here, ahead
of Chainlit's: feedback goes through once the step is found to be the caller's, and sharing is
off. Chainlit's download of a session's uploads is taken over too: files go out as
web_security.file_response. Uploads go through upload_quota's per-user limits first.
"""

from __future__ import annotations

import chainlit.server as chainlit_server
from chainlit.server import UserParam
from chainlit.session import WebsocketSession
from chainlit.types import (
    DeleteFeedbackRequest,
    DeleteThreadRequest,
    UpdateFeedbackRequest,
    UpdateThreadRequest,
)
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

from ragchat.history import FILES_ROUTE, HistoryDataLayer
from ragchat.upload_quota import UploadQuota, upload_within_quota
from ragchat.web_security import file_response

NOT_FOUND = "Not found, or not yours."


def add_history_routes(
    app: FastAPI, layer: HistoryDataLayer, uploads: UploadQuota, prefix: str = ""
) -> None:
    async def serve_file(object_key: str, current_user: UserParam) -> FileResponse:
        found = await layer.owned_file(object_key, current_user.identifier)
        if found is None:  # the same answer whether it exists or belongs to someone else
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        return file_response(*found)

    async def session_file(file_id: str, session_id: str, current_user: UserParam) -> FileResponse:
        # Chainlit checks that the session is the caller's, then serves the upload with the
        # type its browser declared, text/html included: the same file, served as file_response.
        served = await chainlit_server.get_file(file_id, session_id, current_user)
        session = WebsocketSession.get_by_id(session_id)
        name = session.files[file_id]["name"] if session and file_id in session.files else file_id
        return file_response(served.path, name, served.media_type)

    async def update_feedback(
        request: Request, update: UpdateFeedbackRequest, current_user: UserParam
    ):
        feedback = update.feedback
        if await layer.owner_of_step(feedback.forId) != current_user.identifier or (
            feedback.id
            and await layer.owner_of_feedback(feedback.id) not in (None, current_user.identifier)
        ):
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        return await chainlit_server.update_feedback(request, update, current_user)

    async def delete_feedback(
        request: Request, payload: DeleteFeedbackRequest, current_user: UserParam
    ):
        if await layer.owner_of_feedback(payload.feedbackId) != current_user.identifier:
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        return await chainlit_server.delete_feedback(request, payload, current_user)

    async def sharing_is_off() -> None:
        raise HTTPException(status_code=404, detail="Sharing conversations is turned off.")

    # Chainlit's thread routes answer 404 for an unknown thread and 401 for another's, which
    # tells anyone which thread ids exist: both get the same 404 here, then Chainlit's route.
    async def require_own_thread(thread_id: str, current_user: UserParam) -> None:
        if await layer.get_thread_author(thread_id) != current_user.identifier:
            raise HTTPException(status_code=404, detail=NOT_FOUND)

    async def get_thread(request: Request, thread_id: str, current_user: UserParam):
        await require_own_thread(thread_id, current_user)
        return await chainlit_server.get_thread(request, thread_id, current_user)

    async def get_thread_element(
        request: Request, thread_id: str, element_id: str, current_user: UserParam
    ):
        await require_own_thread(thread_id, current_user)
        return await chainlit_server.get_thread_element(
            request, thread_id, element_id, current_user
        )

    async def rename_thread(
        request: Request, payload: UpdateThreadRequest, current_user: UserParam
    ):
        await require_own_thread(payload.threadId, current_user)
        return await chainlit_server.rename_thread(request, payload, current_user)

    async def delete_thread(
        request: Request, payload: DeleteThreadRequest, current_user: UserParam
    ):
        await require_own_thread(payload.threadId, current_user)
        return await chainlit_server.delete_thread(request, payload, current_user)

    routes = [
        (f"{FILES_ROUTE}/{{object_key:path}}", serve_file, ["GET"]),
        ("/project/file/{file_id}", session_file, ["GET"]),
        ("/project/file", upload_within_quota(uploads), ["POST"]),
        ("/feedback", update_feedback, ["PUT"]),
        ("/feedback", delete_feedback, ["DELETE"]),
        ("/project/thread/share", sharing_is_off, ["PUT"]),
        ("/project/share/{thread_id}", sharing_is_off, ["GET"]),
        ("/project/thread/{thread_id}", get_thread, ["GET"]),
        ("/project/thread/{thread_id}/element/{element_id}", get_thread_element, ["GET"]),
        ("/project/thread", rename_thread, ["PUT"]),
        ("/project/thread", delete_thread, ["DELETE"]),
    ]
    for path, endpoint, methods in routes:
        app.router.add_api_route(prefix + path, endpoint, methods=methods)
        # Chainlit's routes, its catch-all page route among them, would otherwise match first.
        app.router.routes.insert(0, app.router.routes.pop())
