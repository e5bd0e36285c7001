"""The chat as the user sees it, in Chainlit's terms: a backend's events rendered as messages,
steps and elements, and the chat's rules (who may add documents, which answers offer a PDF,
what a conversation keeps to be resumed, and how it is resumed).

app.py wires Chainlit's events to a `ChatPresenter`. The rules that need no Chainlit session are
plain functions at the top of this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import chainlit as cl
from chainlit.input_widget import Select, Slider
from chainlit.types import ThreadDict

from ragchat.auth import User, UserStore
from ragchat.backends import (
    TOP_K_MIN,
    AnswerFailed,
    Chat,
    Image,
    QuestionRejected,
    Queued,
    SettingsRejected,
    Source,
    Sources,
    Step,
    Token,
    group_by_label,
)
from ragchat.pdf import answer_pdf, pdf_file_name
from ragchat.queue_notice import QueueNotice
from ragchat.quotes import Cited, cited, quote_block, side_passage
from ragchat.startup import App
from ragchat.support import Quote, supporting_sentences, unsupported_terms
from ragchat.tokens import ACCOUNT_READS, revoked
from ragchat.transcript import exchanges, stored_answer, turns_from_thread, with_sources

log = logging.getLogger(__name__)

STARTER, DOWNLOAD_PDF = "starter", "download_pdf"  # the actions' names
INACTIVE_ACCOUNT = (
    "This session has ended: the account was disabled or deleted, or its password changed. "
    "Sign in again, or ask an administrator for access."
)
SERVER_ERROR = (
    "\n\n*The answer stopped because of an error on the server. Try again; if it keeps "
    "happening, the server log has the details.*"
)
UNKNOWN_STARTER = "That question is not one of the suggestions here; type it in the chat instead."
NOT_YOURS = "That answer is not in your conversations, so it cannot be exported."
CHAT_NOT_OPENED = "This chat did not open on the server. Reload the page, then ask again."
CHAT_OPENING_SECONDS = 60  # making a chat waits its turn for a worker thread under load


# The rules


def may_add_documents(account: User | None, chat: Chat | None) -> bool:
    """Everyone adds to their own conversation; only administrators to the shared library."""
    if account is None or chat is None:
        return False
    return account.is_admin or not chat.uploads_shared


def upload_refusal(names: list[str]) -> str:
    return (
        f"Only administrators can add documents to the shared library, so {', '.join(names)} "
        "was not added. Ask an administrator to add it."
    )


def starter_question(payload: object, starters: Sequence[str]) -> str | None:
    """The question a starter action asks, if the chat offers it: the payload comes from the
    browser, which could otherwise ask (and title the thread) anything, or send no question."""
    question = payload.get("question") if isinstance(payload, dict) else None
    return question if isinstance(question, str) and question in starters else None


def pdf_offers(thread: ThreadDict) -> list[tuple[str, str]]:
    """(question, answer id) for each answer of a stored thread that offers a PDF: those that
    cite the documents ("nothing found" is not worth a PDF)."""
    return [(q["output"], a["id"]) for q, a in exchanges(thread) if stored_answer(a).cites_sources]


def kept_settings(chat: Chat) -> dict:
    """The chat settings saved with the thread: the ones in use, not what the browser sent."""
    return {"top_k": chat.top_k, "mode": chat.mode}


def saved_state(thread: ThreadDict) -> dict | None:
    return (thread.get("metadata") or {}).get("backend_state")


def state_to_save(chat: Chat) -> dict | None:
    """What the thread keeps for the chat's backend (e.g. the hosted assistant's conversation),
    None when the backend needs nothing beyond the messages."""
    return {"backend_state": chat.state} if chat.state else None


def pdf_action(question: str) -> cl.Action:
    return cl.Action(name=DOWNLOAD_PDF, payload={"question": question[:500]}, label="Download PDF")


# The rendering


async def render_answer(
    chat: Chat, question: str, when_complete: Callable[[], Awaitable[None]] | None = None
) -> None:
    """The chat's answer to `question`, streamed as a message with its steps, pictures and
    sources, or what stopped it. `when_complete` runs once the whole answer is in, before the
    user sees it complete."""
    notice = QueueNotice()
    try:
        await _render_answer(chat, question, notice, when_complete)
    finally:
        await notice.clear()


async def _render_answer(
    chat: Chat,
    question: str,
    notice: QueueNotice,
    when_complete: Callable[[], Awaitable[None]] | None,
) -> None:
    reply = cl.Message(content="")
    sources = Sources(items=())
    passages: dict[Source, None] = {}  # every passage the answer was written from
    quotes: list[Quote] = []
    pictures: list[cl.Image] = []
    try:
        async for event in chat.ask(question):
            match event:
                case Queued():
                    await notice.show(event)
                case Token(text):
                    await notice.clear()
                    await reply.stream_token(text)
                case Step(name, step_input, output, step_type):
                    async with cl.Step(name=name, type=step_type) as step:
                        step.input = step_input
                        step.output = output
                case Sources():
                    sources = event
                    passages.update(dict.fromkeys(event.items))
                    if not reply.content:  # before the answer: quote what supports one
                        quotes = await show_quotes(reply, question, event.items)
                case Image(name, url):
                    pictures.append(cl.Image(name=name, url=url, display="inline"))
    except QuestionRejected as rejection:
        await cl.ErrorMessage(content=str(rejection)).send()
        return
    except AnswerFailed as failure:
        if not (failure.partial or reply.content):
            await cl.ErrorMessage(content=str(failure)).send()
            return
        # Never silently cut: what arrived is kept, marked as incomplete.
        note = f"\n\n*Incomplete answer: {failure}*"
        await send_answer(reply, note=note, quotes=cited(quotes))
        return
    except Exception:
        log.exception("Answering %r failed", question[:200])
        await send_answer(reply, note=SERVER_ERROR, quotes=cited(quotes))
        return
    groups = group_by_label(sources.items)
    # Chainlit links each side element from the message text that names it.
    reply.elements = pictures + [
        cl.Text(name=label, content=side_passage(group, quotes), display="side")
        for label, group in groups.items()
    ]
    unsupported: list[str] = []
    if groups:
        reply.actions = [pdf_action(question)]
        answer = reply.content.removeprefix(quote_block(cited(quotes)))
        unsupported = await asyncio.to_thread(unsupported_terms, answer, list(passages))
    if when_complete is not None:
        await when_complete()
    await send_answer(reply, list(groups), quotes=cited(quotes), unsupported=unsupported)


async def show_quotes(reply: cl.Message, question: str, passages: Sequence[Source]) -> list[Quote]:
    """The sentences of the passages that best support an answer to the question, streamed as
    the start of the reply, before the answer is written (ragchat/support.py finds them)."""
    quotes = await asyncio.to_thread(supporting_sentences, question, passages)
    if quotes:
        await reply.stream_token(quote_block(cited(quotes)))
    return quotes


async def send_answer(
    reply: cl.Message,
    labels: Sequence[str] = (),
    note: str = "",
    quotes: Sequence[Cited] = (),
    unsupported: Sequence[str] = (),
) -> None:
    """The answer, marked as the answer to the question, with what backs it: the sentences
    quoted before it (already streamed), the terms no passage holds, the sources it cites."""
    reply.content, reply.metadata = with_sources(reply.content + note, labels, quotes, unsupported)
    await reply.send()


async def send_settings_panel(chat: Chat) -> None:
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


async def apply_settings(chat: Chat, values: dict) -> None:
    """The settings panel's values, if allowed; if not, a message and the chat keeps its own."""
    try:
        chat.configure(top_k=values.get("top_k", chat.top_k), mode=values.get("mode", chat.mode))
    except SettingsRejected as rejection:
        await cl.ErrorMessage(content=str(rejection)).send()
    # Chainlit keeps whatever the browser sent, and saves it with the thread: keep what is used.
    cl.context.session.chat_settings = kept_settings(chat)


def current_account(users: UserStore, token: str, username: str) -> User | None:
    """The account behind a session's token, unless the token is no longer its account's."""
    return None if revoked(users, token) else users.get(username)


async def end_session() -> None:
    await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()


async def opened_chat() -> Chat | None:
    """The session's chat once on_chat_start or on_chat_resume has made it (None if it is
    not made in CHAT_OPENING_SECONDS). Chainlit handles each message in a task of its own,
    alongside the chat's opening (chainlit/socket.py: `message` starts `process_message`
    while `connection_successful` awaits on_chat_resume), so a question asked the moment a
    conversation opens arrives before its chat exists."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHAT_OPENING_SECONDS
    while (chat := cl.user_session.get("chat")) is None and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return chat


class ChatPresenter:
    """What each Chainlit event does, over the app's parts (one per process)."""

    def __init__(self, app: App):
        self.app = app

    async def account(self) -> User | None:
        """The signed-in account, or None once it was disabled, deleted or its password reset:
        a websocket opened before that is still connected, so each chat event checks again.
        Read in a worker thread: an SQLite read waits while a sign-in writes (under load,
        bench/load.py --watch-loop caught it holding the event loop for 219 ms)."""
        session = cl.context.session
        if not session.token:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            ACCOUNT_READS, current_account, self.app.users, session.token, session.user.identifier
        )

    async def start_chat(self) -> None:
        if (account := await self.account()) is None:
            return await end_session()
        # llama_index makes a chat's memory by running its async set-up in a thread of its own
        # and waiting for it (asyncio_run): wait here without holding the event loop.
        chat = await asyncio.to_thread(self.app.backend.new_chat, person=account.username)
        cl.user_session.set("chat", chat)
        await send_settings_panel(chat)
        starters = [
            cl.Action(name=STARTER, payload={"question": question}, label=question)
            for question in self.app.settings.starters
        ]
        await cl.Message(content=self.app.settings.welcome_message, actions=starters).send()

    async def resume_chat(self, thread: ThreadDict) -> None:
        if (account := await self.account()) is None:
            return await end_session()
        chat = await asyncio.to_thread(
            self.app.backend.new_chat,
            history=turns_from_thread(thread),
            state=saved_state(thread),
            person=account.username,
        )
        if saved := cl.context.session.chat_settings:  # restored by Chainlit from the thread
            await apply_settings(chat, saved)
        cl.user_session.set("chat", chat)
        await send_settings_panel(chat)
        for question, answer_id in pdf_offers(thread):  # Chainlit does not store actions
            await pdf_action(question).send(for_id=answer_id)

    async def update_settings(self, values: dict) -> None:
        if (chat := await opened_chat()) is not None:
            await apply_settings(chat, values)

    async def ask_starter(self, action: cl.Action) -> None:
        question = starter_question(action.payload, self.app.settings.starters)
        if question is None:
            await cl.ErrorMessage(content=UNKNOWN_STARTER).send()
            return
        await cl.Message(content=question, type="user_message", author="You").send()
        try:
            await self.answer(question)
        finally:
            # Chainlit names a thread begun by an action after the action ("starter").
            await self.app.history.update_thread(cl.context.session.thread_id, name=question)

    async def receive(self, message: cl.Message) -> None:
        files = [element for element in message.elements if element.path]
        if files:
            await self.add_documents(files)
        if message.content.strip() or not files:
            await self.answer(message.content)

    async def add_documents(self, files: list) -> None:
        chat = await opened_chat()
        if not may_add_documents(await self.account(), chat):
            await cl.ErrorMessage(content=upload_refusal([file.name for file in files])).send()
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

    async def answer(self, question: str) -> None:
        if await self.account() is None:
            return await end_session()
        if (chat := await opened_chat()) is None:
            await cl.ErrorMessage(content=CHAT_NOT_OPENED).send()
            return
        thread_id = cl.context.session.thread_id

        async def keep_state() -> None:
            # Before the answer shows as complete: a conversation reopened at that moment
            # (another tab, a reload) must find the state to continue from.
            if state := state_to_save(chat):
                await self.app.history.update_thread(thread_id, metadata=state)

        await render_answer(chat, question, when_complete=keep_state)

    async def export_pdf(self, action: cl.Action) -> None:
        # The answer is read back from the history, and only from the caller's own threads:
        # the action's ids come from the browser.
        step = await self.app.history.get_step(action.forId)
        owner = await self.app.history.owner_of_step(action.forId)
        if step is None or owner != cl.user_session.get("user").identifier:
            await cl.ErrorMessage(content=NOT_YOURS).send()
            return
        question = str(action.payload.get("question", ""))
        # Laying out a PDF takes 0.3 s or more: not on the loop that every chat shares.
        pdf = await asyncio.to_thread(
            answer_pdf, question, step["output"], self.app.settings.bot_name
        )
        await cl.Message(
            content="The answer as a PDF:",
            elements=[
                cl.File(
                    name=pdf_file_name(question),
                    content=pdf,
                    mime="application/pdf",
                    display="inline",
                )
            ],
        ).send()
