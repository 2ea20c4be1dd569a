"""A property-based fuzz of the HTTP edge, generated from its OpenAPI document.

Every documented route, with bodies drawn from the route's component schema (valid-ish, then mutated:
wrong types, unknown fields, huge strings, junk that is not JSON, bodies over the limit), random path
ids (and real ones, to get past NOT_FOUND), random query values and headers (Last-Event-ID,
Idempotency-Key). What must hold for every answer:

* never a 500 (a 5xx at all only as 503 with Retry-After);
* an error's body is a google.rpc.Status whose code is the HTTP status's gRPC twin;
* a 2xx is a documented status of the route, and its JSON validates against the documented schema;
* an SSE route answers text/event-stream (its first bytes, then we hang up) or an error.

Whatever a request starts (a session, a generation, a training job) is cancelled at once, so the
fuzz costs validation, not denoising. The caller runs ``run`` in a thread of its own (the server's
loop keeps serving); hypothesis drives a blocking httpx client.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator

from philip.evals.personalize import reference_images
from philip.images import png_bytes

CALL_TIMEOUT_S = 15.0
SSE_READ_S = 3.0
PNG = png_bytes(reference_images(1)[0])
# The gRPC codes each HTTP status may carry (docs/HTTP.md's table, read backwards; 413/422 are the edge's own).
CODES_OF_HTTP = {400: {3, 11}, 401: {16}, 403: {7}, 404: {5}, 409: {6, 9, 10}, 413: {8}, 422: {3}, 429: {8},
                 405: {12}, 499: {1}, 501: {12}, 503: {14}, 504: {4}}


def path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


# ---- strategies ----------------------------------------------------------------------------------------

texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "a red circle", "\x00", "é", "sks", "null"]),
                  st.text(max_size=2000))
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
# Header values h11 can send: visible ASCII and obs-text (bytes 0x80-0xff), inner spaces and tabs.
header_values = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80)),
    st.sampled_from([b"0-0", b"1-0", b"0", b"1", b"3", b"99999999999999999999-0", b"1712345678901-0", b"-1",
                     b"1-99999999999999999999", b"abc", b"a b", b"x" * 129, b"x" * 128, b"\xe9t\xe9"]),
).filter(bool)


def ids(real: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(["ses_0", "job_0", "img_0", "tj_0000000000000000", "ad_00000000000000ff", "..", "%",
                         "a.png", "ses_" + "f" * 32, "x" * 300, "a b", "é", "0"]),
        st.text(min_size=1, max_size=40).filter(lambda t: t not in (".", "..")),
    )


class Schemas:
    """Hypothesis strategies for the document's component schemas (protobuf's canonical JSON).

    A few fields lean towards values that pass validation (a prompt, 1-2 images, 1-2 steps, real
    image ids), so that bodies reach past it as often as they fail it."""

    def __init__(self, doc: dict[str, Any], real: list[str]) -> None:
        self.components: dict[str, Any] = doc["components"]["schemas"]
        small = st.sampled_from([0, 1, 2])
        self.hints: dict[str, st.SearchStrategy[Any]] = {
            "prompt": st.sampled_from(["a red circle", "a blue square on white", "sks shape"]),
            "numImages": small, "steps": st.sampled_from([1, 2]), "width": st.just(0), "height": st.just(0),
            "previewEvery": small, "scale": st.sampled_from([0, 4]), "adapterIds": st.just([]),
            "imageId": st.sampled_from(real), "likedImageIds": st.lists(st.sampled_from(real), max_size=2),
            "dislikedImageIds": st.lists(st.sampled_from(real), max_size=1),
            "guidance": st.sampled_from([1.0, 7.5, 31.0, "NaN", "Infinity", "-Infinity", "2.5"]),
            "negativePrompt": st.sampled_from(["", "blurry"]), "scheduler": st.sampled_from(["", "euler", "dpm++"]),
            "style": st.sampled_from(["", "flat", "vivid", "baroque"]),
        }

    def plausible(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """An object of hinted fields only (nested messages too): a body that often passes validation."""
        if "$ref" in schema:
            return self.plausible(self.components[schema["$ref"].removeprefix("#/components/schemas/")], depth + 1)
        optional = {}
        for name, field_schema in schema.get("properties", {}).items():
            if name in self.hints:
                optional[name] = self.hints[name]
            elif "$ref" in field_schema and depth < 3:
                target = self.components[field_schema["$ref"].removeprefix("#/components/schemas/")]
                if target.get("type") == "object" and target.get("properties"):
                    optional[name] = self.plausible(target, depth + 1)
        return st.fixed_dictionaries({}, optional=optional)

    def of(self, schema: dict[str, Any], depth: int = 0, name: str = "") -> st.SearchStrategy[Any]:
        if name in self.hints:
            return st.one_of(self.hints[name], self.hints[name], self._of(schema, depth))
        return self._of(schema, depth)

    def _of(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            target = self.components[schema["$ref"].removeprefix("#/components/schemas/")]
            return st.just({}) if depth > 4 and target.get("type") == "object" else self.of(target, depth + 1)
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "oneOf" in schema:
            return st.one_of([self._of(choice, depth) for choice in schema["oneOf"]])
        kind = schema.get("type")
        if kind == "object":
            properties = schema.get("properties", {})
            if properties:
                return st.fixed_dictionaries({}, optional={k: self.of(v, depth + 1, k) for k, v in properties.items()})
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return st.dictionaries(st.text(max_size=8), self.of(extra, depth + 1), max_size=3)
            return st.dictionaries(st.text(max_size=8), json_junk, max_size=2)
        if kind == "array":
            return st.lists(self.of(schema["items"], depth + 1), max_size=3)
        if kind == "boolean":
            return st.booleans()
        if kind == "number":
            return st.one_of(st.sampled_from([0, 1.5, 7.5, -1.0, 30.0, 1e39]), st.floats(-100, 100))
        if kind == "integer":
            low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1)
            return st.one_of(st.integers(max(low, 0), min(high, 4)), st.sampled_from([low, high, 8, 9, 64, 101]),
                             st.integers(low, high))
        if kind == "string" and schema.get("format") in ("int64", "uint64"):
            return st.one_of(st.integers(0, 50), st.integers(0, 2**64 - 1)).map(str)
        if kind == "string" and schema.get("contentEncoding") == "base64":
            return st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
        return texts


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A schema-drawn body, perhaps with a value of the wrong type, an unknown field or a huge string."""
    body = draw(base)
    how = draw(st.sampled_from(["as is", "as is", "wrong type", "unknown field", "huge string", "nested junk"]))
    if not isinstance(body, dict) or how == "as is":
        return body
    if how == "unknown field":
        body[draw(st.text(min_size=1, max_size=12))] = draw(json_junk)
    elif how == "huge string":
        body[draw(st.sampled_from([*body, "prompt"]) if body else st.just("prompt"))] = "x" * draw(
            st.sampled_from([1001, 70_000, 600_000]))
    elif how == "wrong type" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(json_junk)
    elif how == "nested junk" and body:
        key = draw(st.sampled_from(sorted(body)))
        if isinstance(body[key], dict):
            body[key][draw(st.text(max_size=8))] = draw(json_junk)
    return body


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"{", b"[]", b"null", b'"x"', b"3", b"\xff\xfe", b"{}", b"NaN",
                     b'{"params": {"prompt": "a nan", "guidance": NaN, "steps": 2, "numImages": 1}}',
                     b'{"prompt": "an infinity", "guidance": Infinity, "steps": 2, "numImages": 1}',
                     b'{"prompt": "a str nan", "guidance": "NaN", "steps": 2, "numImages": 1}',
                     b'{"params": {"prompt": "a str inf", "guidance": "-Infinity", "steps": 2, "numImages": 1}}']),
    st.just(b'{"prompt": "' + b"y" * (1024 * 1024) + b'"}'),  # over the JSON limit
)


@dataclass
class Call:
    method: str
    path: str  # the route's template
    url: str
    op: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, bytes] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None


def multipart_fields(draw: st.DrawFn) -> tuple[list[tuple[str, tuple[str, bytes, str]]], dict[str, str]]:
    """The adapter form: sometimes a valid one (4 photos, a token, LORA, 2 steps) with one field redrawn."""
    valid = draw(st.integers(0, 3)) == 0
    photos = [PNG] * 4 if valid else draw(st.lists(st.one_of(st.just(PNG), st.binary(max_size=80),
                                                             st.just(PNG[:60])), max_size=8))
    files = [("photos", (f"p{i}.png", photo, "image/png")) for i, photo in enumerate(photos)]
    data: dict[str, str] = {"token": draw(st.sampled_from(["zqx", "zqy", "sks"])), "class_word": "shape",
                            "method": "LORA", "steps": "2"} if valid else {}
    for name, values in (("token", st.one_of(texts, st.sampled_from(["sks", "zq", "red"]))),
                         ("class_word", st.one_of(texts, st.sampled_from(["shape", "dog"]))),
                         ("method", st.one_of(st.sampled_from(["LORA", "TEXTUAL_INVERSION", "lora", "X", ""]), texts)),
                         ("steps", st.one_of(st.sampled_from(["1", "2", "0", "-1", "x", "5001", "9" * 30]), texts)),
                         ("rank", st.one_of(st.sampled_from(["0", "1", "4", "65", "abc"]), texts))):
        if draw(st.integers(0, 3 if valid else 1)) == 1:
            data[name] = draw(values).replace("\x00", "")
    return files, data


def calls(doc: dict[str, Any], real: list[str]) -> st.SearchStrategy[Call]:
    schemas = Schemas(doc, real)
    operations = [(method.upper(), path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]

    @st.composite
    def one(draw: st.DrawFn) -> Call:
        method, path, op = draw(st.sampled_from(operations))
        url = path
        for name in path_names(path):
            url = url.replace("{" + name + "}", quote(draw(ids(real)), safe=""))
        call = Call(method, path, url, op)
        for parameter in op.get("parameters", []):
            if not draw(st.booleans()):
                continue
            name = parameter["name"]
            if parameter["in"] == "query":
                call.params[name] = draw(st.one_of(
                    st.integers(-5, 120).map(str), st.sampled_from(["", "abc", "1e3", "99999999999999999999", "-0"]),
                    st.text(max_size=20), ids(real)))
            elif parameter["in"] == "header":
                call.headers[name] = draw(header_values)
        if draw(st.integers(0, 9)) == 0:  # query spellings the edge also reads
            call.params[draw(st.sampled_from(["lastEventId", "page_size", "page_token"]))] = draw(st.text(max_size=8))
        body = op.get("requestBody", {}).get("content", {})
        if "multipart/form-data" in body:
            if draw(st.integers(0, 4)) == 0:
                call.content = draw(raw_bodies)
            else:
                call.files, call.data = multipart_fields(draw)
        elif "application/json" in body:
            choice = draw(st.integers(0, 9))
            if choice == 0:
                call.content = None
            elif choice <= 2:
                call.content = draw(raw_bodies)
            else:
                schema = body["application/json"]["schema"]
                drawn = draw(mutated(st.one_of(schemas.of(schema), schemas.plausible(schema))))
                call.content = json.dumps(drawn).encode()
            if call.content is not None:
                call.headers["Content-Type"] = draw(st.sampled_from([b"application/json"] * 4 + [b"text/plain"]))
        return call

    return one()


# ---- checks --------------------------------------------------------------------------------------------


class Checker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self._validators: dict[str, OAS31Validator] = {}

    def validator(self, ref: str) -> OAS31Validator:
        if ref not in self._validators:
            self._validators[ref] = OAS31Validator({"$ref": ref, "components": self.doc["components"]})
        return self._validators[ref]

    def error(self, call: Call, response: httpx.Response) -> None:
        where = f"{call.method} {call.url} -> {response.status_code}"
        kind = response.headers.get("content-type", "")
        assert kind.startswith("application/json"), f"{where}: {kind} {response.content[:200]!r}"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("code"), int) and isinstance(body.get("message"), str), (
            where, body)
        assert set(body) <= {"code", "message", "details"} and isinstance(body.get("details", []), list), (where, body)
        self.validator("#/components/schemas/google.rpc.Status").validate(body)
        assert body["code"] in CODES_OF_HTTP.get(response.status_code, set()), (where, body)
        if response.status_code in (429, 503):
            retry = response.headers.get("retry-after", "")
            assert retry.isdigit() and int(retry) >= 1, (where, retry)

    def success(self, call: Call, response: httpx.Response) -> None:
        where = f"{call.method} {call.url} -> {response.status_code}"
        documented = call.op["responses"].get(str(response.status_code))
        assert documented is not None, f"{where}: not a documented status"
        content = documented.get("content", {})
        if "application/json" in content:
            assert response.headers["content-type"].startswith("application/json"), where
            self.validator(content["application/json"]["schema"]["$ref"]).validate(response.json())
        elif "image/png" in content:
            assert response.headers["content-type"] == "image/png" and response.content.startswith(b"\x89PNG"), where


def send(client: httpx.Client, call: Call, checker: Checker) -> tuple[int, Any]:
    """Make ``call``; check its answer; return the status and the JSON of a success (for the clean-up)."""
    headers = {k: v for k, v in call.headers.items()}
    kwargs: dict[str, Any] = {"params": call.params, "headers": headers}
    if call.files is not None:  # without photos, httpx sends the fields url-encoded: not multipart, a 400
        kwargs.update(files=call.files or None, data=call.data or None)
    elif call.content is not None:
        kwargs["content"] = call.content
    sse = "text/event-stream" in call.op["responses"].get("200", {}).get("content", {})
    with client.stream(call.method, call.url, **kwargs) as response:
        status = response.status_code
        assert status != 500 and (status < 500 or status in (503,)), (
            f"{call.method} {call.url} -> {status}: {response.read()[:300]!r}")
        if sse and status == 200:
            assert response.headers["content-type"].startswith("text/event-stream"), response.headers
            first = next(response.iter_raw(), b"")
            assert first.startswith(b"retry: ") or first.startswith(b"id: "), first[:100]
            return status, None
        response.read()
    if status >= 400:
        checker.error(call, response)
        return status, None
    checker.success(call, response)
    return status, response.json() if response.headers.get("content-type", "").startswith("application/json") \
        else None


def clean_up(client: httpx.Client, call: Call, status: int, answer: Any) -> None:
    """Cancel whatever a successful create started (the fuzz is about the edge, not the model)."""
    if not (200 <= status < 300 and isinstance(answer, dict)) or call.method != "POST":
        return
    if call.path == "/v1/sessions":
        client.post(f"/v1/sessions/{answer['sessionId']}/cancel")
    elif call.path == "/v1/generations":
        client.post(f"/v1/jobs/{answer['jobId']}/cancel")
    elif call.path == "/v1/adapters":
        client.post(f"/v1/training-jobs/{answer['jobId']}/cancel")


def run(base_url: str, doc: dict[str, Any], real_ids: list[str], examples: int) -> Counter[str]:
    """``examples`` fuzzed calls against ``base_url``; the count of each "METHOD path status"."""
    checker = Checker(doc)
    seen: Counter[str] = Counter()
    timeout = httpx.Timeout(CALL_TIMEOUT_S, read=CALL_TIMEOUT_S)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much, HealthCheck.large_base_example])
        @given(calls(doc, real_ids))
        def one(call: Call) -> None:
            status, answer = send(client, call, checker)
            clean_up(client, call, status, answer)
            seen[f"{call.method} {call.path} {status}"] += 1

        one()
    return seen


__all__ = ["CODES_OF_HTTP", "path_names", "refs_in", "run"]
