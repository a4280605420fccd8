"""lamina's loggers. ``LAMINA_LOG=fallback`` (comma-separated topics) prints them to stderr.

Topics: ``fallback`` (one line per op or graph PyTorch runs instead of lamina), ``compile``
(one line per compiled graph), ``cache`` (warnings: a damaged or unwritable kernel cache entry,
repaired or worked around). Without the variable they go to the ``logging`` module
(logger ``lamina.<topic>``) like any library's logs.
"""
from __future__ import annotations

import logging
import os

TOPICS = ("fallback", "compile", "cache")


def logger(topic: str) -> logging.Logger:
    """The logger of ``topic``, with a stderr handler when LAMINA_LOG names it."""
    log = logging.getLogger(f"lamina.{topic}")
    wanted = {t.strip() for t in os.environ.get("LAMINA_LOG", "").split(",")}
    if (topic in wanted or "all" in wanted) and not any(getattr(h, "_lamina", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("lamina %(name)s: %(message)s"))
        handler._lamina = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log
