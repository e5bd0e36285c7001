"""Chainlit handlers: the chat UI's glue to ragchat. The logic lives in ragchat/."""

import logging

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.server import app as chainlit_server

from ragchat.backends import QuestionRejected, Sources, Step, Token, group_by_label
from ragchat.login import login, throttle_logins
from ragchat.startup import start

ragchat = start()
chainlit_config.ui.name = ragchat.settings.bot_name
throttle_logins(chainlit_server)
log = logging.getLogger("ragchat.app")

INACTIVE_ACCOUNT = "This account has been disabled or deleted. Ask an administrator for access."


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    return await login(ragchat.users, username, password)


def account_is_active() -> bool:
    account = ragchat.users.get(cl.user_session.get("user").identifier)
    return account is not None and not account.disabled


@cl.on_chat_start
async def start_chat() -> None:
    if not account_is_active():
        await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()
        return
    cl.user_session.set("chat", ragchat.backend.new_chat())
    starters = [
        cl.Action(name="starter", payload={"question": question}, label=question)
        for question in ragchat.settings.starters
    ]
    await cl.Message(content=ragchat.settings.welcome_message, actions=starters).send()


@cl.action_callback("starter")
async def ask_starter(action: cl.Action) -> None:
    question = action.payload["question"]
    await cl.Message(content=question, type="user_message", author="You").send()
    await answer(question)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await answer(message.content)


async def answer(question: str) -> None:
    chat = cl.user_session.get("chat")
    if chat is None or not account_is_active():
        await cl.ErrorMessage(content=INACTIVE_ACCOUNT).send()
        return
    reply = cl.Message(content="")
    sources = Sources(items=())
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
    except QuestionRejected as rejection:
        await cl.ErrorMessage(content=str(rejection)).send()
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
    if groups:
        # Chainlit links each element from the message text that names it.
        reply.elements = [
            cl.Text(name=label, content="\n\n---\n\n".join(s.text for s in group), display="side")
            for label, group in groups.items()
        ]
        reply.content += "\n\nSources: " + ", ".join(groups)
    await reply.send()
