"""Logging for the app and the CLI: ragchat's own lines at INFO, libraries' chatter at WARNING."""

import logging

_NOISY = ["llama_index", "httpx", "sentence_transformers", "transformers", "lancedb"]


def setup_logging() -> None:
    if not logging.getLogger().handlers:  # `chainlit run` has set up its own already
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s"
        )
    logging.getLogger("ragchat").setLevel(logging.INFO)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # It warns "table doesn't exist yet" before every first build, which is the normal case.
    logging.getLogger("llama_index.vector_stores.lancedb.base").setLevel(logging.ERROR)
