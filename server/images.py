"""Image parts of a chat request: read (a data: URL, or an http(s) URL the
server was told it may fetch), decoded with Pillow and embedded by the
model's vision tower. Every bad part is a 400 that names it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any

from server.common import APIError, Config
from torchchat.vision import ImageError, open_image

# A fetched image's time limit, seconds.
FETCH_TIMEOUT_S = 10.0


def _bad(where: str, message: str, code: str = "invalid_image") -> APIError:
    return APIError(400, f"{where}: {message}", param=where, code=code)


def _data_url(where: str, url: str, limit: int) -> bytes:
    head, sep, body = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise _bad(where, "a data: URL must be base64 (data:image/png;base64,...)")
    if len(body) * 3 // 4 > limit:
        raise _bad(where, f"the image is larger than {limit} bytes", "image_too_large")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "the data: URL is not valid base64") from None


def _get(url: str, limit: int) -> bytes:
    """GET `url` (stdlib urllib), at most `limit` bytes, in FETCH_TIMEOUT_S
    overall; raises ValueError with the reason."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + FETCH_TIMEOUT_S
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as r:  # noqa: S310 (http(s) only)
            data = bytearray()
            while chunk := r.read(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise OverflowError(limit)
                if time.monotonic() > deadline:
                    raise TimeoutError
            return bytes(data)
    except urllib.error.HTTPError as e:
        raise ValueError(f"fetching the image gave HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"cannot fetch the image ({type(e).__name__})") from None


async def _fetch(where: str, url: str, limit: int) -> bytes:
    try:
        return await asyncio.wait_for(asyncio.to_thread(_get, url, limit), FETCH_TIMEOUT_S + 1)
    except OverflowError:
        raise _bad(where, f"the image is larger than {limit} bytes", "image_too_large") from None
    except TimeoutError:
        raise _bad(where, f"fetching the image took over {FETCH_TIMEOUT_S:g} s") from None
    except ValueError as e:
        raise _bad(where, str(e)) from None


async def read_images(config: Config, parts: list[tuple[str, str]]) -> list[Any]:
    """The parts' images as PIL images, in order."""
    if len(parts) > config.max_images:
        where = parts[config.max_images][0]
        raise _bad(where, f"at most {config.max_images} images per request", "too_many_images")
    out = []
    for where, url in parts:
        if url.startswith("data:"):
            data = _data_url(where, url, config.max_image_bytes)
        elif url.startswith(("http://", "https://")):
            if not config.allow_image_urls:
                raise _bad(
                    where,
                    "image URLs are not fetched by this server (send a data: URL, or start "
                    "it with --allow-image-urls)",
                    "image_url_refused",
                )
            data = await _fetch(where, url, config.max_image_bytes)
        else:
            raise _bad(where, "an image URL must be a data: or http(s) URL")
        try:
            out.append(await asyncio.to_thread(open_image, data, where))
        except ImageError as e:
            raise APIError(400, str(e), param=where, code="invalid_image") from None
    return out
