"""Chainlit handlers: the chat UI's glue to ragchat. The logic lives in ragchat/."""

import asyncio
import logging
from pathlib import Path

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select, Slider
from chainlit.server import app as chainlit_server
from chainlit.types import ThreadDict

from ragchat.backends import (
    TOP_K_MIN,
    AnswerFailed,
    Image,
    QuestionRejected,
    SettingsRejected,
    Sources,
    Step,
    Token,
    group_by_label,
)
from ragchat.history import exchanges, turns_from_thread
from ragchat.ingest import UPLOAD_TYPES
from ragchat.login import login, throttle_logins
from ragchat.pdf import answer_pdf, pdf_file_name
from ragchat.routes import add_history_routes
from ragchat.socket_guard import accept_only_user_messages
from ragchat.startup import keep_in_sync, start
from ragchat.tokens import RevokedTokens, revoked
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
log = logging.getLogger("ragchat.app")
background_tasks = set()

INACTIVE_ACCOUNT = (
    "This session has ended: the account was disabled or deleted, or its password changed. "
    "Sign in again, or ask an administrator for access."
)


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


def current_account():
    """The signed-in account, or None once it was disabled, deleted or its password reset: a
    websocket opened before that is still connected, so each chat event checks again."""
    session = cl.context.session
    if not session.token or revoked(ragchat.users, session.token):
        return None
    return ragchat.users.get(session.user.identifier)


@cl.on_chat_start
async def start_chat() -> None:
    if current_account() is None:
        await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()
        return
    chat = ragchat.backend.new_chat()
    cl.user_session.set("chat", chat)
    await send_settings_panel(chat)
    starters = [
        cl.Action(name="starter", payload={"question": question}, label=question)
        for question in ragchat.settings.starters
    ]
    await cl.Message(content=ragchat.settings.welcome_message, actions=starters).send()


@cl.on_chat_resume
async def resume_chat(thread: ThreadDict) -> None:
    if current_account() is None:
        await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()
        return
    state = (thread.get("metadata") or {}).get("backend_state")
    chat = ragchat.backend.new_chat(history=turns_from_thread(thread), state=state)
    if saved := cl.context.session.chat_settings:  # restored by Chainlit from the thread
        await apply_settings(chat, saved)
    cl.user_session.set("chat", chat)
    await send_settings_panel(chat)
    for question, answer in exchanges(thread):  # Chainlit does not store actions
        if "\n\nSources: " in answer["output"]:
            await pdf_action(question["output"]).send(for_id=answer["id"])


async def send_settings_panel(chat) -> None:
    await cl.ChatSettings(
        [
            Select(
                id="mode",
                label="Search the documents by",
                items={
                    "meaning and words (hybrid)": "hybrid",
                    "meaning": "vector",
                    "words": "lexical",
                },
                initial_value=chat.mode,
            ),
            Slider(
                id="top_k",
                label="Passages per answer",
                initial=chat.top_k,
                min=TOP_K_MIN,
                max=chat.top_k_max,
                step=1,
            ),
        ]
    ).send()


@cl.on_settings_update
async def retune(values: dict) -> None:
    chat = cl.user_session.get("chat")
    if chat is not None:
        await apply_settings(chat, values)


async def apply_settings(chat, values: dict) -> None:
    """The settings panel's values, if allowed; if not, a message and the chat keeps its own."""
    try:
        chat.configure(top_k=values.get("top_k", chat.top_k), mode=values.get("mode", chat.mode))
    except SettingsRejected as rejection:
        await cl.ErrorMessage(content=str(rejection)).send()
    # Chainlit keeps whatever the browser sent, and saves it with the thread: keep what is used.
    cl.context.session.chat_settings = {"top_k": chat.top_k, "mode": chat.mode}


@cl.action_callback("starter")
async def ask_starter(action: cl.Action) -> None:
    question = action.payload["question"]
    await cl.Message(content=question, type="user_message", author="You").send()
    try:
        await answer(question)
    finally:
        # Chainlit names a thread begun by an action after the action ("starter").
        await ragchat.history.update_thread(cl.context.session.thread_id, name=question)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    files = [element for element in message.elements if element.path]
    if files:
        await add_documents(files)
    if message.content.strip() or not files:
        await answer(message.content)


async def add_documents(files: list) -> None:
    account = current_account()
    chat = cl.user_session.get("chat")
    if account is None or chat is None or (chat.uploads_shared and not account.is_admin):
        names = ", ".join(file.name for file in files)
        await cl.ErrorMessage(
            content=f"Only administrators can add documents to the shared library, so {names} "
            "was not added. Ask an administrator to add it."
        ).send()
        return
    summaries = []
    async with cl.Step(name="Add documents", type="tool") as step:
        step.input = ", ".join(file.name for file in files)
        for file in files:
            outcome = await asyncio.to_thread(chat.add_upload, Path(file.path), file.name)
            summaries.append(outcome.summary())
            step.output = "\n".join(summaries)
            await step.update()
    await cl.Message(content="\n".join(summaries)).send()


async def answer(question: str) -> None:
    chat = cl.user_session.get("chat")
    if chat is None or current_account() is None:
        await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()
        return
    reply = cl.Message(content="")
    sources = Sources(items=())
    pictures: list[cl.Image] = []
    try:
        async for event in chat.ask(question):
            match event:
                case Token(text):
                    await reply.stream_token(text)
                case Step(name, step_input, output, step_type):
                    async with cl.Step(name=name, type=step_type) as step:
                        step.input = step_input
                        step.output = output
                case Sources():
                    sources = event
                case Image(name, url):
                    pictures.append(cl.Image(name=name, url=url, display="inline"))
    except QuestionRejected as rejection:
        await cl.ErrorMessage(content=str(rejection)).send()
        return
    except AnswerFailed as failure:
        if failure.partial:  # never silently cut: what arrived is kept, marked as incomplete
            reply.content += f"\n\n*Incomplete answer: {failure}*"
            await reply.send()
        else:
            await cl.ErrorMessage(content=str(failure)).send()
        return
    except Exception:
        log.exception("Answering %r failed", question[:200])
        reply.content += (
            "\n\n*The answer stopped because of an error on the server. Try again; if it keeps "
            "happening, the server log has the details.*"
        )
        await reply.send()
        return
    groups = group_by_label(sources.items)
    # Chainlit links each side element from the message text that names it.
    reply.elements = pictures + [
        cl.Text(name=label, content="\n\n---\n\n".join(s.text for s in group), display="side")
        for label, group in groups.items()
    ]
    if groups:  # an answer from the documents; "nothing found" is not worth a PDF
        reply.content += "\n\nSources: " + ", ".join(groups)
        reply.actions = [pdf_action(question)]
    await reply.send()
    if chat.state:  # e.g. the hosted assistant's conversation: kept with the thread, for resume
        await ragchat.history.update_thread(
            cl.context.session.thread_id, metadata={"backend_state": chat.state}
        )


def pdf_action(question: str) -> cl.Action:
    return cl.Action(
        name="download_pdf", payload={"question": question[:500]}, label="Download PDF"
    )


@cl.action_callback("download_pdf")
async def download_pdf(action: cl.Action) -> None:
    # The answer is read back from the history, and only from the caller's own threads: the
    # action's ids come from the browser.
    step = await ragchat.history.get_step(action.forId)
    owner = await ragchat.history.owner_of_step(action.forId)
    if step is None or owner != cl.user_session.get("user").identifier:
        await cl.ErrorMessage(
            content="That answer is not in your conversations, so it cannot be exported."
        ).send()
        return
    question = str(action.payload.get("question", ""))
    pdf = answer_pdf(question, step["output"], ragchat.settings.bot_name)
    await cl.Message(
        content="The answer as a PDF:",
        elements=[
            cl.File(
                name=pdf_file_name(question), content=pdf, mime="application/pdf", display="inline"
            )
        ],
    ).send()
