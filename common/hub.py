"""The Hugging Face Hub, reached at once or not at all.

Unreachable (no network, DNS fails, a firewall), huggingface_hub (2.4) retries a file's
request with back-off (hf_hub_download, the data zip: ~23 s and ten lines of warnings for a
refused connection) and waits out each request's timeout where packets are dropped, before
a run's one-line error.
HF_HUB_OFFLINE=1 skips the network entirely; without it, one TCP connect to the endpoint
(or to the HTTPS proxy in the environment), with a short timeout, decides: unreachable ->
every Hub call here is made with local_files_only=True, so the cache answers at once or
the call fails at once. No TensorFlow here.
"""
import functools
import os
import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def declared_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def reachable() -> bool:
    """Whether a TCP connection to the Hub endpoint (or the proxy that would carry it) opens."""
    if declared_offline():
        return False
    url = urlparse(endpoint())
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if url.scheme == "https" else (
        os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"))
    from urllib.request import proxy_bypass_environment
    if proxy and not proxy_bypass_environment(url.hostname or ""):  # NO_PROXY: straight to the endpoint
        url = urlparse(proxy if "://" in proxy else "http://" + proxy)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def call_kwargs() -> dict:
    """Extra keyword arguments for a snapshot_download / hf_hub_download call."""
    return {} if reachable() else {"local_files_only": True}


def unreachable_note() -> str:
    """How the Hub stood, for an error message: '' when it was reachable."""
    if declared_offline():
        return "offline (HF_HUB_OFFLINE=1)"
    return "" if reachable() else f"offline (the Hub at {endpoint()} is unreachable; set HF_HUB_OFFLINE=1 to skip the check)"
