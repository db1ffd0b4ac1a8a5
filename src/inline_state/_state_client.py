"""A small async client for the Bot State REST API (v3 paths, or v1 with a bot id)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from ._errors import PreconditionFailed

__all__ = ["BotData", "StateApiError", "StateClient"]


@dataclass(frozen=True, slots=True)
class BotData:
    """A record as the API returns it: ``data`` (object, string or None) and its eTag."""

    data: dict[str, Any] | str | None
    etag: str


class StateApiError(Exception):
    """The API answered with an error other than 412."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body}")


def _part(value: str) -> str:
    return quote(value, safe="")


class StateClient:
    """Reads and writes records through the REST API, for read-modify-write with ETags.

    ``channel`` selects the v3 paths (the bot comes from the credential); without it,
    ``bot_id`` selects the v1 paths. ``set_*`` raises PreconditionFailed on 412: read
    again, reapply your change, and retry.
    """

    def __init__(
        self,
        base_url: str,
        *,
        secret: str,
        channel: str | None = None,
        bot_id: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if (channel is None) == (bot_id is None):
            raise ValueError("pass channel= (v3 paths) or bot_id= (v1 paths)")
        root = base_url.rstrip("/")
        self._base = (
            f"{root}/v3/botstate/{_part(channel)}"
            if channel is not None
            else f"{root}/bot/v1.0/bots/{_part(bot_id or '')}"
        )
        self._v3 = channel is not None
        self._headers = {"Authorization": f"Bearer {secret}"}
        self._session = session or aiohttp.ClientSession()
        self._owns_session = session is None

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        url = self._base + path
        async with self._session.request(
            method, url, json=body, headers=self._headers, params=params or None
        ) as response:
            payload = await response.json(content_type=None)
            if response.status == 412:
                raise PreconditionFailed(payload["error"]["message"])
            if response.status >= 400:
                raise StateApiError(response.status, payload)
            return payload

    async def _get(self, path: str) -> BotData:
        body = await self._call("GET", path)
        return BotData(body["data"], body["eTag"])

    async def _set(self, path: str, data: dict[str, Any] | str | None, etag: str | None) -> BotData:
        body = await self._call("POST", path, {"data": data, "eTag": etag})
        return BotData(body["data"], body["eTag"])

    @staticmethod
    def _user(user: str) -> str:
        return f"/users/{_part(user)}"

    @staticmethod
    def _conversation(conversation: str) -> str:
        return f"/conversations/{_part(conversation)}"

    async def get_user_data(self, user: str) -> BotData:
        """The user's record."""
        return await self._get(self._user(user))

    async def set_user_data(
        self, user: str, data: dict[str, Any] | str | None, etag: str | None
    ) -> BotData:
        """Write the user's record: ``etag`` from a read, ``"*"``, or None to create."""
        return await self._set(self._user(user), data, etag)

    async def get_conversation_data(self, conversation: str) -> BotData:
        """The conversation's record."""
        return await self._get(self._conversation(conversation))

    async def set_conversation_data(
        self, conversation: str, data: dict[str, Any] | str | None, etag: str | None
    ) -> BotData:
        """Write the conversation's record."""
        return await self._set(self._conversation(conversation), data, etag)

    async def get_private_conversation_data(self, conversation: str, user: str) -> BotData:
        """The record of one user in one conversation."""
        return await self._get(self._conversation(conversation) + self._user(user))

    async def set_private_conversation_data(
        self, conversation: str, user: str, data: dict[str, Any] | str | None, etag: str | None
    ) -> BotData:
        """Write the record of one user in one conversation."""
        return await self._set(self._conversation(conversation) + self._user(user), data, etag)

    async def delete_user(self, user: str) -> None:
        """Delete the user's record and all their per-conversation records."""
        await self._call("DELETE", self._user(user))

    async def export(
        self, continuation_token: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the channel's records (v3 only) and the token of the next page."""
        if not self._v3:
            raise ValueError("export exists on v3 paths only")
        params = {"continuationToken": continuation_token} if continuation_token else {}
        body = await self._call("GET", "/exportBotStateData", **params)
        return body["botStateData"], body["continuationToken"]


def basic_credentials(app_id: str, secret: str) -> str:
    """An ``Authorization`` header value for HTTP Basic ``appId:secret``."""
    return "Basic " + base64.b64encode(f"{app_id}:{secret}".encode()).decode()
