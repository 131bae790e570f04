"""Released data files fetched by URL and checked against a sha256 given in advance (the paper's
memorized-window and quotes files, pinned to a commit of its repository)."""

from __future__ import annotations

import hashlib
import urllib.request

from curvmem.io import atomic_output


def fetch_url(url: str, sha256: str, out, timeout: float = 60.0) -> dict:
    """Download `url` (https://, http:// or file://) to `out`; refuse, and write nothing, when its
    sha256 is not `sha256`."""
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"--sha256 must be 64 hex digits, got '{sha256}'")
    if not url.startswith(("https://", "http://", "file://")):
        raise ValueError(f"{url}: only https://, http:// and file:// URLs are fetched")
    h, size = hashlib.sha256(), 0
    with atomic_output(out) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    h.update(block)
                    dst.write(block)
                    size += len(block)
        except OSError as e:  # URLError is an OSError: no network, no such file, HTTP error
            raise ValueError(f"{url}: cannot fetch ({e})") from None
        if h.hexdigest() != sha256:
            raise ValueError(f"{url}: sha256 {h.hexdigest()} is not the expected {sha256} "
                             "(a changed file, or the wrong URL); nothing written")
    return {"out": str(out), "url": url, "sha256": sha256, "bytes": size}
