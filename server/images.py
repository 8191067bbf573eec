"""Image parts of a chat request: read (a data: URL, or an http(s) URL the
server was told it may fetch), decoded with Pillow and embedded by the
model's vision tower. Every bad part is a 400 that names it."""

from __future__ import annotations

import asyncio
import base64
import binascii
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


async def _fetch(where: str, url: str, limit: int) -> bytes:
    import httpx

    data = bytearray()
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                async with client.stream("GET", url) as r:
                    if r.status_code != 200:
                        raise _bad(where, f"fetching the image gave HTTP {r.status_code}")
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if len(data) > limit:
                            raise _bad(
                                where, f"the image is larger than {limit} bytes", "image_too_large"
                            )
    except (httpx.HTTPError, TimeoutError) as e:
        raise _bad(where, f"cannot fetch the image ({type(e).__name__})") from None
    return bytes(data)


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
