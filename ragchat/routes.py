"""HTTP routes added to Chainlit's server for chat history: element files served to their
owner only, and owner checks where Chainlit's own routes have none.

Chainlit checks that a thread is yours before showing, renaming or deleting it, but not before
writing or deleting feedback (any step or feedback id will do), and it lets a thread be shared
with anyone, signed in or not. Those routes are taken over here, ahead of Chainlit's: feedback
goes through once the step is found to be the caller's, and sharing is off.
"""

from __future__ import annotations

from urllib.parse import quote

import chainlit.server as chainlit_server
from chainlit.server import UserParam
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

from ragchat.history import FILES_ROUTE, HistoryDataLayer

NOT_FOUND = "Not found, or not yours."


def add_history_routes(app: FastAPI, layer: HistoryDataLayer, prefix: str = "") -> None:
    async def serve_file(object_key: str, current_user: UserParam) -> FileResponse:
        found = await layer.owned_file(object_key, current_user.identifier)
        if found is None:  # the same answer whether it exists or belongs to someone else
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        path, name, mime = found
        return FileResponse(
            path,
            media_type=mime,
            headers={"Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"},
        )

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

    routes = [
        (f"{FILES_ROUTE}/{{object_key:path}}", serve_file, ["GET"]),
        ("/feedback", update_feedback, ["PUT"]),
        ("/feedback", delete_feedback, ["DELETE"]),
        ("/project/thread/share", sharing_is_off, ["PUT"]),
        ("/project/share/{thread_id}", sharing_is_off, ["GET"]),
    ]
    for path, endpoint, methods in routes:
        app.router.add_api_route(prefix + path, endpoint, methods=methods)
        # Chainlit's routes, its catch-all page route among them, would otherwise match first.
        app.router.routes.insert(0, app.router.routes.pop())
