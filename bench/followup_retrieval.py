"""Which retrieval query serves a follow-up question best with the local models?

Two-turn conversations over the user guide. The first question is answered for real by the
backend; for the second, each strategy builds the retrieval query:
- latest only:    the follow-up as typed ("and on Upsun?");
- joined text:    the previous question and the follow-up, embedded as one text;
- LLM condense:   llama_index's condense prompt, rewritten by the local LLM;
- weighted (app): the mean of the embeddings of the follow-up, counted twice, and of the
                  previous question (what the app does with the small local model).
A hit is a retrieved chunk holding the passage that answers the follow-up. Conversations that
switch topic check that the history does not drown the new question.

    python bench/followup_retrieval.py [--chunk-size 240]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory

from ragchat.backends import Token, create_backend
from ragchat.backends.llama_index import FollowUpChatEngine, follow_up_query
from ragchat.config import load_settings
from ragchat.logs import setup_logging

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "ragchat-user-guide.md"

FOLLOW_UPS = [
    ("How do I add my own documents?", "and on Upsun?", "mount:upload"),
    ("What does the Retrieve step show?", "and where are the sources?", "Below the answer"),
    ("Which model writes the answers?", "how do I run another local one?", "LOCAL_LLM_PATH"),
    ("How do I use OpenAI instead?", "which setting picks its embedding model?", "OPENAI_EMBED_MODEL"),
    ("Where does the index live?", "how do I rebuild it?", "rebuilds the index"),
    ("What happens when nothing matches my question?", "what should I do then?", "Ask\nagain with other words"),
    ("Do my documents leave the machine?", "and with OpenAI models?", "are sent to the OpenAI-compatible"),
    ("How do I change the assistant's name?", "and its greeting?", "WELCOME_MESSAGE"),
    ("What does TOP_K do?", "what is its default?", "(default 4)"),
    ("How are answers generated?", "how do I make them less repetitive?", "LLM_REPEAT_PENALTY"),
    ("What does SIMILARITY_CUTOFF do?", "what is its default?", "(default 0.2)"),
    ("How do I set the starter questions?", "how do I separate them?", "separated by `|`"),
]
TOPIC_SWITCHES = [
    ("How do I add my own documents?", "Which embedding model finds the passages?", "all-MiniLM-L6-v2"),
    ("Do my documents leave the machine?", "How do I change the starter questions?", "STARTERS"),
    ("Where does the index live?", "Can I use a llama.cpp server or vLLM?", "OPENAI_BASE_URL"),
    ("What does TOP_K do?", "What happens when a setting has a wrong value?", "stops the app at start"),
]
STRATEGIES = ["latest only", "joined text", "LLM condense", "weighted (app)"]


async def measure(backend, conversations, top_k: int) -> dict[str, list[int]]:
    retriever = backend.library.index().as_retriever(similarity_top_k=top_k)
    condenser = FollowUpChatEngine(
        retriever=retriever,
        llm=backend._llm,
        memory=Memory.from_defaults(),
        recent_turns=None,
        embed_model=backend.library.embed_model,
    )
    ranks: dict[str, list[int]] = {name: [] for name in STRATEGIES}
    for first, follow_up, key in conversations:
        answer = "".join(
            [e.text async for e in backend.new_chat().ask(first) if isinstance(e, Token)]
        )
        history = [ChatMessage(role="user", content=first), ChatMessage(role="assistant", content=answer)]
        queries = {
            "latest only": follow_up,
            "joined text": f"{first}\n{follow_up}",
            "LLM condense": await condenser._acondense_question(history, follow_up),
            "weighted (app)": follow_up_query(history, follow_up, 1),
        }
        for name, query in queries.items():
            hits = await retriever.aretrieve(query)
            rank = next((i + 1 for i, hit in enumerate(hits) if key in hit.node.get_content()), 0)
            ranks[name].append(rank)
    return ranks


def report(title: str, ranks: dict[str, list[int]]) -> None:
    print(f"\n{title} ({len(next(iter(ranks.values())))} conversations)")
    print(f"{'strategy':16}{'hit@1':>8}{'hit@2':>8}{'hit@4':>8}{'MRR':>8}")
    for name, found in ranks.items():
        def hit(k: int) -> float:
            return sum(1 for r in found if 0 < r <= k) / len(found)

        mrr = sum(1 / r for r in found if r) / len(found)
        print(f"{name:16}{hit(1):>8.2f}{hit(2):>8.2f}{hit(4):>8.2f}{mrr:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args()
    setup_logging()
    work = Path(tempfile.mkdtemp(prefix="ragchat-bench-"))
    (work / "data").mkdir()
    shutil.copy(GUIDE, work / "data")
    overrides = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    settings = load_settings(
        _env_file=None, data_dir=work / "data", storage_dir=work / "storage", **overrides
    )
    backend = create_backend(settings)
    print(f"chunk size {settings.chunk_size}, retrieving the top 4 with the local models")
    report("Follow-ups", asyncio.run(measure(backend, FOLLOW_UPS, 4)))
    report("Topic switches", asyncio.run(measure(backend, TOPIC_SWITCHES, 4)))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
