"""Paging through a store stream newest first (activity log, session index): one set of rules."""

from __future__ import annotations

from philip.rpc.errors import InvalidArgument
from philip.store.base import parse_stream_id

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def check_page(page_size: int, page_token: str, rpc: str) -> int:
    """The page size to read (``page_size`` or the default); InvalidArgument for a bad size or token."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0-{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}), got {page_size}",
                              field="page_size")
    if page_token:
        try:
            parse_stream_id(page_token)
        except ValueError:
            raise InvalidArgument(f"page_token is not one {rpc} gave out; leave it empty for the newest entries",
                                  field="page_token") from None
    return page_size or DEFAULT_PAGE_SIZE


__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "check_page"]
