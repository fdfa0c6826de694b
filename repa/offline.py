"""Offline behaviour: know quickly whether the Hugging Face Hub can be reached, instead of retrying for a minute.

``hub_is_reachable()`` is False when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, and otherwise tries
one TCP connection to the Hub's host (``HF_ENDPOINT``, or the HTTPS proxy when one is configured) with a short
timeout; the answer is kept for the process. Loaders then read only the local cache when it is False, and their
errors say how to point at a local folder.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


def offline_requested() -> bool:
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) is set."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _probe_address() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme in ("https", "") else 80)


@lru_cache(maxsize=1)
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_is_reachable() -> bool:
    """False when offline mode is requested or the Hub's host does not answer within a few seconds."""
    if offline_requested():
        return False
    return _reachable(*_probe_address())


def offline_hint() -> str:
    """Why the Hub was not asked, for error messages."""
    if offline_requested():
        return "HF_HUB_OFFLINE is set, so only the local Hugging Face cache was read"
    host, port = _probe_address()
    return f"no network: {host}:{port} did not answer, so only the local Hugging Face cache was read"
