"""The open-stream bounds' bookkeeping (the gateway-level test is tests/reliability/test_open_streams.py)."""

from __future__ import annotations

import pytest

from philip.rpc.errors import ResourceExhausted
from philip.stream_limits import RETRY_AFTER_S, StreamLimits


def test_a_tenant_past_its_own_bound_is_refused_while_others_and_the_open_gateway_go_on() -> None:
    limits = StreamLimits(max_streams=5, max_per_tenant=2)
    held = [limits.take("acme"), limits.take("acme")]
    with pytest.raises(ResourceExhausted) as refused:
        limits.take("acme")
    assert "PHILIP_MAX_STREAMS_PER_TENANT" in str(refused.value) and refused.value.retry_after_s == RETRY_AFTER_S
    other = limits.take("globex")
    assert limits.take("") and limits.open == 4  # an open gateway's callers ("") have no per-tenant bound
    held[0].release()
    held[0].release()  # a second release gives nothing back twice
    assert limits.open == 3
    with limits.take("acme"):
        assert limits.open == 4
    assert limits.open == 3
    other.release()


def test_past_the_process_bound_everyone_is_refused_until_a_stream_ends() -> None:
    limits = StreamLimits(max_streams=2, max_per_tenant=2)
    first, _ = limits.take("a"), limits.take("b")
    with pytest.raises(ResourceExhausted) as refused:
        limits.take("c")
    assert "PHILIP_MAX_STREAMS" in str(refused.value)
    first.release()
    assert limits.take("c") and limits.open == 2
