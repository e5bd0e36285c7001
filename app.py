"""Chainlit handlers: the chat UI's glue to ragchat. The logic lives in ragchat/."""

import asyncio

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.server import app as chainlit_server
from chainlit.types import ThreadDict

from ragchat.documents import UPLOAD_TYPES
from ragchat.login import login, throttle_logins
from ragchat.presenter import DOWNLOAD_PDF, STARTER, ChatPresenter
from ragchat.routes import add_history_routes
from ragchat.socket_guard import accept_only_user_messages
from ragchat.startup import keep_in_sync, start
from ragchat.tokens import RevokedTokens
from ragchat.upload_quota import UploadQuota
from ragchat.web_security import install_web_security

ragchat = start()
chainlit_config.ui.name = ragchat.settings.bot_name
uploads = chainlit_config.features.spontaneous_file_upload
# What the browser checks; the server checks the same (ragchat/upload_quota.py).
uploads.enabled, uploads.accept, uploads.max_size_mb, uploads.max_files = (
    True,
    UPLOAD_TYPES,
    ragchat.settings.upload_max_mb,
    ragchat.settings.upload_max_files,
)
throttle_logins(chainlit_server)
chainlit_server.add_middleware(RevokedTokens, users=ragchat.users)  # ragchat/tokens.py
install_web_security(chainlit_server, ragchat.settings)  # runs before the throttle: added later
accept_only_user_messages()
add_history_routes(
    chainlit_server,
    ragchat.history,
    uploads=UploadQuota.from_settings(ragchat.settings),
    prefix=chainlit_config.run.root_path,
)
presenter = ChatPresenter(ragchat)  # ragchat/presenter.py: the rendering and the rules
background_tasks = set()


@cl.on_app_startup
async def watch_documents() -> None:
    if ragchat.settings.watch_interval:
        task = asyncio.create_task(keep_in_sync(ragchat.backend, ragchat.settings.watch_interval))
        background_tasks.add(task)  # the loop keeps only a weak reference


@cl.data_layer
def history():
    return ragchat.history


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    return await login(ragchat.users, username, password)


@cl.on_chat_start
async def start_chat() -> None:
    await presenter.start_chat()


@cl.on_chat_resume
async def resume_chat(thread: ThreadDict) -> None:
    await presenter.resume_chat(thread)


@cl.on_settings_update
async def retune(values: dict) -> None:
    await presenter.update_settings(values)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await presenter.receive(message)


@cl.action_callback(STARTER)
async def ask_starter(action: cl.Action) -> None:
    await presenter.ask_starter(action)


@cl.action_callback(DOWNLOAD_PDF)
async def download_pdf(action: cl.Action) -> None:
    await presenter.export_pdf(action)
