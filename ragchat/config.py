"""Typed settings read from the environment and `.env`, validated once at start.

Every setting is documented in `.env.example`. `load_settings()` turns a validation failure
into a `ConfigError` whose message is one line per bad value: what was wrong and what is
allowed, so the app can stop with that line instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ragchat.database import normalized_url, shown, url_from_upsun

log = logging.getLogger(__name__)

# `chainlit run` puts this in place of OPENAI_API_KEY whenever the CI environment variable is
# set (its --ci mode), which CI machines and some hosts do: whatever key was there is lost.
CHAINLIT_CI_KEY = "sk-FAKE-OPENAI-API-KEY"
CI_KEY_HINT = (
    "Chainlit replaced OPENAI_API_KEY with a fake key because the CI environment variable is "
    "set; unset CI to use your own key"
)


class ConfigError(Exception):
    """A setting has a value the app cannot run with."""


Provider = Literal["auto", "local", "openai"]
# Tokens of the context window a question needs at least, beside the passages and the answer.
QUESTION_ROOM_MIN = 256


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # `LOCAL_LLM_PATH=` in .env means "use the default"
        extra="ignore",
    )

    rag_backend: Literal["llama_index", "assistant"] = "llama_index"

    data_dir: Path = Path("data")
    storage_dir: Path = Path("storage")
    # How often DATA_DIR is checked for added, changed and removed files (0: only at start).
    watch_interval: float = Field(5.0, ge=0)
    upload_max_mb: int = Field(20, ge=1, le=1024)
    # What one user's uploads may hold on the server at once (files and megabytes, all their
    # open chats together), and how far a zipped document (.docx) may expand when read.
    upload_max_files: int = Field(20, ge=1, le=1000)
    upload_quota_mb: int = Field(100, ge=1, le=100_000)
    unzipped_max_mb: int = Field(50, ge=1, le=10_000)

    # Web security. ALLOWED_ORIGINS: other origins (https://host[:port]) whose pages may call
    # the app with the user's cookie; empty means the app's own origin only.
    allowed_origins: Annotated[list[str], NoDecode] = []
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto count (addresses or networks);
    # empty: the connecting address is the client. CLIENT_IP_HEADER: a header that the one
    # proxy every request passes sets to the client's address (Upsun's router: X-Client-IP).
    trusted_proxies: Annotated[list[str], NoDecode] = []
    client_ip_header: str | None = None
    # PostgreSQL for every store (accounts, conversations, the index), shared by every instance
    # of the app: postgresql://user:password@host:5432/name. On Upsun, a relationship named
    # `postgresql` sets it. Empty: everything stays in the local files below.
    database_url: str | None = Field(None, repr=False)
    # Accounts; the session-signing secret is kept next to it when not set in the environment.
    db_path: Path = Path("database/auth.db")
    # Conversations (messages, feedback) and the files attached to them: sources, PDFs, uploads.
    history_db_path: Path = Path("database/history.db")
    history_files_dir: Path = Path("database/history-files")

    # Which models answer and embed. "auto" means OpenAI when OPENAI_API_KEY is set,
    # otherwise the local models that ship inside Python packages.
    llm_provider: Provider = "auto"
    embed_provider: Provider = "auto"
    local_llm_path: Path | None = None
    local_embed_path: Path | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4.1-mini"
    openai_embed_model: str = "text-embedding-3-small"
    # Seconds an OpenAI request may take before the user is told so.
    openai_timeout: float = Field(45.0, gt=0, le=600)

    # The hosted assistant (RAG_BACKEND=assistant): OPENAI_MODEL with file_search over a
    # vector store, created for the app and kept in sync with DATA_DIR unless one is named here.
    openai_vector_store_id: str | None = None
    assistant_instructions: str = (
        "Answer questions using the files you can search, and cite them. When the files do "
        "not hold the answer, say so instead of guessing."
    )
    # Let the assistant run Python in OpenAI's sandbox (charts, calculations); its code and
    # output show as a step, its pictures in the answer.
    assistant_code_interpreter: bool = False

    # Sampling for generation; the defaults keep a 135M model from looping.
    llm_temperature: float = Field(0.2, ge=0.0, le=2.0)
    llm_top_p: float = Field(0.9, gt=0.0, le=1.0)
    llm_repeat_penalty: float = Field(1.2, ge=1.0, le=2.0)
    llm_max_tokens: int = Field(384, ge=16, le=8192)
    llm_context_window: int = Field(4096, ge=512, le=131072)
    llm_threads: int | None = Field(None, ge=1)
    # Answers an OpenAI-compatible server writes at once; more questions wait in line, told
    # their place. The local model always writes one at a time.
    max_concurrent_answers: int = Field(8, ge=1, le=1000)

    # Retrieval
    retrieval_mode: Literal["vector", "lexical", "hybrid"] = "hybrid"
    chunk_size: int = Field(240, ge=32, le=8192)
    chunk_overlap: int = Field(24, ge=0)
    top_k: int = Field(4, ge=1, le=50)
    similarity_cutoff: float = Field(0.2, ge=-1.0, le=1.0)
    # "auto": condense follow-ups with the LLM when it is a capable (OpenAI) model, otherwise
    # search with the recent questions too (bench/followup_retrieval.py compares them).
    followup_query: Literal["auto", "condense", "recent_turns"] = "auto"
    history_turns: int = Field(1, ge=0, le=20)

    # Persona
    bot_name: str = Field("Ragchat", min_length=1, max_length=60)
    welcome_message: str = (
        "Hi! I answer questions about the documents in this workspace and show where each "
        "answer comes from."
    )
    starters: Annotated[list[str], NoDecode] = [
        "What can ragchat do?",
        "How do I add my own documents?",
        "Which models does ragchat use?",
    ]

    @field_validator("starters", mode="before")
    @classmethod
    def _split_starters(cls, value: object) -> object:
        # One line in .env is friendlier than JSON: STARTERS="First?|Second?"
        if isinstance(value, str):
            return [part.strip() for part in value.split("|") if part.strip()]
        return value

    @field_validator("allowed_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], e.g. "
                    "https://chat.example.com"
                )
        return [origin.rstrip("/") for origin in value]

    @field_validator("trusted_proxies")
    @classmethod
    def _are_addresses(cls, value: list[str]) -> list[str]:
        for proxy in value:
            if proxy == "*":
                raise ValueError(
                    "'*' would let any client choose its own address; list the proxies' "
                    "addresses (e.g. 127.0.0.1,10.0.0.0/8), or set CLIENT_IP_HEADER when one "
                    "proxy (Upsun's router) reaches the app"
                )
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or network, e.g. 127.0.0.1 or 10.0.0.0/8"
                ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _is_postgresql(cls, value: str | None) -> str | None:
        return value if value is None else normalized_url(value)

    @model_validator(mode="before")
    @classmethod
    def _database_from_upsun(cls, values: object) -> object:
        if isinstance(values, dict) and not values.get("database_url"):
            if url := url_from_upsun():
                values = {**values, "database_url": url}
        return values

    @field_validator("local_llm_path")
    @classmethod
    def _gguf_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(
                f"no file at {value}; give the path of a .gguf model file, "
                "or leave it empty to use the bundled SmolLM2"
            )
        return value

    @field_validator("local_embed_path")
    @classmethod
    def _embed_folder_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(
                f"no folder at {value}; give a sentence-transformers model folder, "
                "or leave it empty to use the bundled all-MiniLM-L6-v2"
            )
        return value

    @field_validator("openai_api_key")
    @classmethod
    def _not_chainlits_stand_in(cls, value: SecretStr | None) -> SecretStr | None:
        # Taking the stand-in for a real key would switch "auto" to OpenAI and fail at the
        # first question; without it the local models answer, as with no key at all.
        if value is not None and value.get_secret_value() == CHAINLIT_CI_KEY:
            log.warning("%s. Until then it counts as not set.", CI_KEY_HINT)
            return None
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/v1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"CHUNK_SIZE ({self.chunk_size})"
            )
        if self.prompt_room < QUESTION_ROOM_MIN:
            raise ValueError(
                f"LLM_CONTEXT_WINDOW ({self.llm_context_window}) leaves no room for the question: "
                f"TOP_K ({self.top_k}) passages of CHUNK_SIZE ({self.chunk_size}) tokens and an "
                f"answer of LLM_MAX_TOKENS ({self.llm_max_tokens}) need about "
                f"{self.llm_context_window - self.prompt_room + QUESTION_ROOM_MIN}; raise "
                "LLM_CONTEXT_WINDOW or lower the others"
            )
        if self.openai_api_key is None and self.rag_backend == "assistant":
            raise ValueError(
                _needs_key(
                    "RAG_BACKEND=assistant", "use RAG_BACKEND=llama_index for the local models"
                )
            )
        if self.openai_api_key is None:
            for name in ("llm_provider", "embed_provider"):
                if getattr(self, name) == "openai":
                    raise ValueError(_needs_key(f"{name.upper()}=openai", "use 'local' or 'auto'"))
        return self

    @property
    def prompt_room(self) -> int:
        return self.prompt_room_with(self.top_k)

    def prompt_room_with(self, top_k: int) -> int:
        """Tokens of the context window left for the question and the conversation once
        `top_k` passages and the answer have theirs (passages counted double: they are measured
        in the embedding model's tokens, and the LLM's tokenizer and prompt add to them)."""
        return self.llm_context_window - self.llm_max_tokens - 2 * top_k * self.chunk_size

    @property
    def top_k_that_fits(self) -> int:
        """The most passages per answer that leave a question room in the context window."""
        room = self.llm_context_window - self.llm_max_tokens - QUESTION_ROOM_MIN
        return room // (2 * self.chunk_size)

    @property
    def llm_is_local(self) -> bool:
        return _resolve(self.llm_provider, self.openai_api_key) == "local"

    @property
    def embed_is_local(self) -> bool:
        return _resolve(self.embed_provider, self.openai_api_key) == "local"


def _needs_key(what: str, alternative: str) -> str:
    if os.environ.get("OPENAI_API_KEY") == CHAINLIT_CI_KEY:
        return f"{what} needs OPENAI_API_KEY: {CI_KEY_HINT}"
    return f"{what} needs OPENAI_API_KEY; set it, or {alternative}"


def _resolve(provider: Provider, api_key: SecretStr | None) -> Literal["local", "openai"]:
    if provider == "auto":
        return "openai" if api_key is not None else "local"
    return provider


def load_settings(**overrides: object) -> Settings:
    """Read settings, raising ConfigError with one line per bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError("\n".join(_describe(e) for e in error.errors())) from None


def _describe(error: dict) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not location:  # a model-level check already names its settings
        return f"Invalid setting: {message}"
    setting = location.split(".")[0].upper()
    got = error.get("input")
    if setting == "DATABASE_URL" and isinstance(got, str):
        got = shown(got)  # never a password in a log
    value = f"={got!r}" if isinstance(got, (str, int, float)) else ""
    return f"Invalid setting {setting}{value}: {message}"
