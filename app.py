"""Chainlit handlers: the chat UI's glue to a ragchat backend. The logic lives in ragchat/."""

import logging
import sys

import chainlit as cl
from chainlit.config import config as chainlit_config

from ragchat.backends import (
    QuestionRejected,
    Sources,
    Step,
    Token,
    create_backend,
    group_by_label,
)
from ragchat.config import ConfigError, load_settings
from ragchat.logs import setup_logging

setup_logging()
try:
    settings = load_settings()
    backend = create_backend(settings)  # loads the models and the index once per process
except ConfigError as error:
    sys.exit(f"ragchat cannot start: {error}")

chainlit_config.ui.name = settings.bot_name
log = logging.getLogger("ragchat.app")


@cl.on_chat_start
async def start_chat() -> None:
    cl.user_session.set("chat", backend.new_chat())
    starters = [
        cl.Action(name="starter", payload={"question": question}, label=question)
        for question in settings.starters
    ]
    await cl.Message(content=settings.welcome_message, actions=starters).send()


@cl.action_callback("starter")
async def ask_starter(action: cl.Action) -> None:
    question = action.payload["question"]
    await cl.Message(content=question, type="user_message", author="You").send()
    await answer(question)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await answer(message.content)


async def answer(question: str) -> None:
    reply = cl.Message(content="")
    sources = Sources(items=())
    try:
        async for event in cl.user_session.get("chat").ask(question):
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
