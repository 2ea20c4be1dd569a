"""Redis reply conversions for :class:`~philip.store.redis_store.RedisStore`: stream entries, ids, TTLs, URLs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from philip.store.base import StreamEntry

# Stream entry fields: a normal event/work item carries its payload under "p"; the terminal
# marker carries only "end", so it can never be confused with a payload.
PAYLOAD = b"p"
END = b"end"


# A Redis that is there but cannot serve now: a replica after a failover (READONLY), over maxmemory (OOM), a
# long script (BUSY), cluster failovers (TRYAGAIN, CLUSTERDOWN, MASTERDOWN); redis-py parses most into classes.
TRANSIENT_ERRORS = (ReadOnlyError, OutOfMemoryError, TryAgainError, ClusterDownError, MasterDownError)
TRANSIENT_REPLIES = frozenset({"READONLY", "OOM", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"})


def is_transient(exc: RedisError) -> bool:
    """Whether another try (or replica) will serve what this error refused."""
    return isinstance(exc, TRANSIENT_ERRORS) or (isinstance(exc, ResponseError)
                                                 and str(exc).split(" ", 1)[0] in TRANSIENT_REPLIES)


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable redis url>"


def text(value: bytes | str) -> str:
    # decode_responses=False, so replies are bytes; redis-py's stubs still say bytes | str.
    return value.decode() if isinstance(value, bytes) else value


def ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


def entries(raw: Any) -> list[StreamEntry]:
    """Convert redis-py's [(id, {field: value}), ...] (fields None for deleted entries) to StreamEntry."""
    out: list[StreamEntry] = []
    for entry_id, fields in raw or []:
        if fields is None:  # entry trimmed/deleted while still pending: nothing to deliver
            continue
        eid = text(entry_id)
        if END in fields:
            out.append(StreamEntry(eid, b"", terminal=True))
        else:
            out.append(StreamEntry(eid, fields.get(PAYLOAD, b"")))
    return out


def read_reply(reply: Any) -> list[StreamEntry]:
    """Entries of the single stream in an XREAD/XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return entries(next(iter(reply.values()))[0])
    return entries(reply[0][1])


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")
