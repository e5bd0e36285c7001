"""The seams between documents, the stores that keep them and the backends: each backend takes
only what it needs, and what they share is one piece of code with one signature. No models."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from ragchat.backends import Knowledge, QuestionRejected, check_question
from ragchat.backends.assistant import AssistantBackend
from ragchat.backends.llama_index import LlamaIndexBackend
from ragchat.ingest import Library

from .conftest import ROOT


def test_the_hosted_assistant_loads_neither_lancedb_nor_llama_index() -> None:
    program = "import sys, ragchat.backends.assistant; print(sorted({*sys.modules}))"
    loaded = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'openai'" in loaded  # what it does need
    assert "lancedb" not in loaded and "llama_index" not in loaded


@pytest.mark.parametrize("store", [Library, LlamaIndexBackend, AssistantBackend])
def test_every_store_syncs_as_the_protocol_says(store: type) -> None:
    assert inspect.signature(store.sync).parameters == inspect.signature(Knowledge.sync).parameters


def test_a_question_is_checked_against_the_limit_its_backend_gives() -> None:
    check_question("x" * 10, 10, "the model reads")
    with pytest.raises(QuestionRejected, match="^The message is empty: type a question"):
        check_question(" \n", 10, "the model reads")
    with pytest.raises(QuestionRejected) as refusal:
        check_question("x" * 11, 10, "the model reads")
    assert str(refusal.value) == (
        "The message is 11 characters long; the model reads at most 10 at once. Shorten it, or "
        "ask about one part at a time."
    )
