"""Settings: env parsing, override precedence, and loud failures naming the variable."""

import dataclasses

import pytest

from philip.settings import Settings, env_name


def test_defaults_without_env() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.store.redis_url is None and s.server.port == 50051 and s.server.log_format == "json"
    assert s.models.onnx_providers == ("CPUExecutionProvider",)
    assert s.server.threads is None and s.server.metrics_port is None and s.upstreams.generator_addr is None


def test_env_values_are_parsed_to_types() -> None:
    env = {
        "PHILIP_REDIS_URL": "redis://redis:6379/0",
        "PHILIP_PORT": " 6000 ",
        "PHILIP_GRACE_S": "2.5",
        "PHILIP_LOG_FORMAT": "Console",
        "PHILIP_DEVICE": "cuda:1",
        "PHILIP_THREADS": "4",
        "PHILIP_ONNX_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
        "PHILIP_GENERATOR_ADDR": "dns:///generator:50051",
        "PHILIP_METRICS_PORT": "",  # empty optional => None
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert s.store.redis_url == "redis://redis:6379/0"
    assert s.server.port == 6000 and s.server.grace_s == 2.5 and s.server.threads == 4
    assert s.server.log_format == "console" and s.server.device == "cuda:1"
    assert s.models.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert s.upstreams.generator_addr == "dns:///generator:50051" and s.server.metrics_port is None


def test_overrides_win_and_none_means_unset() -> None:
    env = {"PHILIP_PORT": "6000", "PHILIP_HOST": "0.0.0.0"}
    s = Settings.from_env(env, port=7000, host=None, max_batch="3", onnx_providers=["A", "B"], grace_s=1)
    assert s.server.port == 7000  # CLI flag beats env
    assert s.server.host == "0.0.0.0"  # an unset flag (None) does not clobber env
    assert s.batching.max_batch == 3 and s.models.onnx_providers == ("A", "B") and s.server.grace_s == 1.0


def test_frozen_and_with() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    t = s.with_(port=0, redis_url="redis://x")
    assert (t.server.port, t.store.redis_url, s.server.port) == (0, "redis://x", 50051)
    with pytest.raises(ValueError, match="PHILIP_PORT"):
        s.with_(port=-1)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PHILIP_PORT", "abc"),
        ("PHILIP_PORT", "70000"),
        ("PHILIP_GRACE_S", "soon"),
        ("PHILIP_GRACE_S", "-1"),
        ("PHILIP_MAX_BATCH", "0"),
        ("PHILIP_LOG_FORMAT", "xml"),
        ("PHILIP_LOG_LEVEL", "chatty"),
        ("PHILIP_DEVICE", "tpu"),
        ("PHILIP_THREADS", "0"),
        ("PHILIP_ONNX_PROVIDERS", " , "),
        ("PHILIP_METRICS_PORT", "x"),
        ("PHILIP_BLOB_TTL_S", "1.5"),
    ],
)
def test_bad_env_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: value})
    assert f"{var}={value!r}" in str(info.value)


def test_bad_override_types_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="PHILIP_MAX_QUEUE"):
        Settings.from_env({}, max_queue=1.5)
    with pytest.raises(ValueError, match="PHILIP_PORT"):
        Settings.from_env({}, port=True)
    with pytest.raises(ValueError, match="bogus"):
        Settings.from_env({}, bogus=1)


def test_every_field_has_an_env_var() -> None:
    env = {env_name(name): "" for name in Settings.field_names() if name.endswith("_addr")}
    assert set(env) == {"PHILIP_GENERATOR_ADDR", "PHILIP_REFINER_ADDR", "PHILIP_PERSONALIZER_ADDR"}
    assert Settings.from_env(env).upstreams.refiner_addr is None
