"""The OpenAI stand-in, through the real ``openai`` library (and raw HTTP where the library
would refuse to send the request): shapes, validation, output switches, faults, control API."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from sandbox.http import Server
from sandbox.openai_api import OpenAIApp

POST = "<post>Incremental compilation in Rust finally feels fast on big workspaces</post>"
REPLIES_SCHEMA = {
    "type": "object",
    "properties": {
        "replies": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
    },
    "required": ["replies"],
    "additionalProperties": False,
}
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["score"],
    "additionalProperties": False,
}


def json_schema(schema: dict, name: str = "replies", strict: bool = True) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    }


@pytest.fixture
def app() -> OpenAIApp:
    return OpenAIApp()


@pytest.fixture
def url(app):
    with Server(app) as server:
        yield server.url


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=5)


def ask(client: openai.OpenAI, content: str = POST, **options):
    return client.chat.completions.create(
        model=options.pop("model", "gpt-4o-mini"),
        messages=[{"role": "user", "content": content}],
        **options,
    )


def post_raw(url: str, body: object, key: str | None = "sk-test") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=5)


# --- shapes -------------------------------------------------------------------------------


def test_models_are_listed_and_retrieved(client):
    models = client.models.list()
    assert [model.id for model in models] == ["gpt-4o-mini", "gpt-4o", "sandbox-model"]
    assert all(model.object == "model" and model.owned_by for model in models)
    assert client.models.retrieve("sandbox-model").id == "sandbox-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_completion_has_the_real_shape(client, url):
    completion = ask(client)
    choice = completion.choices[0]
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint.startswith("fp_")
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert 0 < len(choice.message.content) < 200
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    raw = post_raw(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-remaining-requests"].isdigit()


def test_replies_are_deterministic_and_about_the_post(client):
    first = ask(client).choices[0].message.content
    assert ask(client).choices[0].message.content == first
    assert (
        ask(client, "<post>Sourdough starters need patience</post>").choices[0].message.content
        != first
    )
    words = {"incremental", "compilation", "rust", "finally", "feels", "fast", "workspaces"}
    assert any(word in first.lower() for word in words)


def test_n_returns_that_many_distinct_choices(client):
    completion = ask(client, n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in completion.choices}) == 3


def test_requests_are_recorded(client, app):
    ask(client, "hello there", temperature=0.2)
    assert app.completions[-1]["messages"] == [{"role": "user", "content": "hello there"}]
    assert app.completions[-1]["temperature"] == 0.2


def test_streaming_gives_the_same_text(client):
    whole = ask(client).choices[0].message.content
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.total_tokens > 0


# --- structured output --------------------------------------------------------------------


def test_json_schema_answer_conforms(client):
    content = ask(client, response_format=json_schema(REPLIES_SCHEMA)).choices[0].message.content
    replies = json.loads(content)["replies"]
    assert len(replies) == 3
    assert all(isinstance(reply, str) and 0 < len(reply) < 280 for reply in replies)
    score = json.loads(
        ask(client, response_format=json_schema(SCORE_SCHEMA, "relevance"))
        .choices[0]
        .message.content
    )["score"]
    assert 0 <= score <= 1


def test_every_basic_type_is_generated(client):
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "count": {"type": "integer", "minimum": 2, "maximum": 9},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "mood": {"type": "string", "enum": ["happy", "sad"]},
            "nested": {
                "type": "object",
                "properties": {"x": {"type": "number"}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
        "required": ["title", "count", "ok", "tags", "mood", "nested"],
        "additionalProperties": False,
    }
    data = json.loads(
        ask(client, response_format=json_schema(schema, "thing")).choices[0].message.content
    )
    assert isinstance(data["title"], str)
    assert isinstance(data["count"], int)
    assert 2 <= data["count"] <= 9
    assert isinstance(data["ok"], bool)
    assert len(data["tags"]) == 2
    assert data["mood"] in ("happy", "sad")
    assert 0 <= data["nested"]["x"] <= 1


def test_json_object_is_answered_with_json(client):
    content = ask(client, "Answer in json: " + POST, response_format={"type": "json_object"})
    assert isinstance(json.loads(content.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        ask(client, POST, response_format={"type": "json_object"})


def test_strict_schemas_are_checked_like_openai(client):
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError, match="additionalProperties"):
        ask(client, response_format=json_schema(loose))
    missing = {**loose, "additionalProperties": False, "required": []}
    with pytest.raises(openai.BadRequestError, match="Missing 'a'"):
        ask(client, response_format=json_schema(missing))
    assert ask(client, response_format=json_schema(loose, strict=False)).choices[0].message.content
    with pytest.raises(openai.BadRequestError, match=r"json_schema\.name"):
        ask(client, response_format=json_schema(REPLIES_SCHEMA, name="has spaces"))


def test_json_schema_can_be_refused_like_older_servers(client, app):
    app.json_schema_supported = False
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, response_format=json_schema(REPLIES_SCHEMA))
    assert refused.value.body["param"] == "response_format"
    assert "not supported" in refused.value.body["message"]
    assert ask(client).choices[0].message.content  # plain text still works


# --- output switches ----------------------------------------------------------------------


def test_output_modes_in_plain_text(client, app):
    normal = ask(client).choices[0].message.content
    app.output_mode = "empty"
    assert ask(client).choices[0].message.content == ""
    app.output_mode = "overlong"
    overlong = ask(client).choices[0].message.content
    assert overlong.startswith(normal)
    assert len(overlong) > 400
    app.output_mode = "quoted"
    quoted = ask(client).choices[0].message.content
    assert quoted != normal
    assert normal in quoted
    assert quoted[0] in "\"'\u201cR"
    app.output_mode = "truncated"
    truncated = ask(client).choices[0]
    assert truncated.finish_reason == "length"
    assert normal.startswith(truncated.message.content)
    assert len(truncated.message.content) < len(normal)
    app.output_mode = "refusal"
    refused = ask(client).choices[0].message
    assert (refused.content, bool(refused.refusal)) == (None, True)


def test_output_modes_with_a_schema(client, app):
    fmt = json_schema(REPLIES_SCHEMA)
    normal = json.loads(ask(client, response_format=fmt).choices[0].message.content)["replies"]
    app.output_mode = "non_json"
    prose = ask(client, response_format=fmt).choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(prose)
    assert all(reply in prose for reply in normal)
    app.output_mode = "truncated"
    cut = ask(client, response_format=fmt).choices[0]
    assert cut.finish_reason == "length"
    assert cut.message.content.startswith('{"replies": ["')
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.message.content)
    app.output_mode = "quoted"
    quoted = json.loads(ask(client, response_format=fmt).choices[0].message.content)["replies"]
    assert quoted != normal
    assert all(plain in wrapped for plain, wrapped in zip(normal, quoted, strict=True))


def test_half_an_emoji_reaches_the_client_as_a_lone_surrogate(client, app, url):
    normal = ask(client).choices[0].message.content
    app.output_mode = "lone_surrogate"
    raw = post_raw(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": POST}]})
    assert "\\ud83d" in raw.text, "sent as an escape: the body itself is valid UTF-8"
    content = ask(client).choices[0].message.content
    assert content == normal + " \ud83d"
    with pytest.raises(UnicodeEncodeError):
        content.encode("utf-8")


def test_half_an_emoji_inside_a_json_answer_is_an_escape_in_its_text(client, app):
    fmt = json_schema(REPLIES_SCHEMA)
    normal = json.loads(ask(client, response_format=fmt).choices[0].message.content)["replies"]
    app.output_mode = "lone_surrogate"
    content = ask(client, response_format=fmt).choices[0].message.content
    assert "\\ud83d" in content, "the model's own JSON escapes it"
    assert json.loads(content)["replies"] == [reply + " \ud83d" for reply in normal]


def test_nul_inside_the_reply(client, app):
    normal = ask(client).choices[0].message.content
    app.output_mode = "nul"
    content = ask(client).choices[0].message.content
    assert "\x00" in content
    assert content.replace("\x00", "") == normal


def test_max_tokens_cuts_the_answer(client):
    choice = ask(client, max_tokens=3).choices[0]
    assert choice.finish_reason == "length"
    assert len(choice.message.content) == 12


def test_scripted_replies_come_first_and_in_order(client, app):
    app.scripted_replies = ["first scripted", "second scripted"]
    assert ask(client).choices[0].message.content == "first scripted"
    assert ask(client).choices[0].message.content == "second scripted"
    assert ask(client).choices[0].message.content not in ("first scripted", "second scripted")


def test_fixed_score(client, app):
    app.score = 0.25
    fmt = json_schema(SCORE_SCHEMA, "relevance")
    assert json.loads(ask(client, response_format=fmt).choices[0].message.content) == {
        "score": 0.25
    }
    assert ask(client, "Answer with a number between 0 and 1.").choices[0].message.content == "0.25"


# --- validation and auth ------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(url):
    reply = post_raw(url, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]


def test_unknown_model_can_be_refused_as_openrouter_does(url, client, app):
    app.unknown_model_style = "openrouter"
    reply = post_raw(url, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 400
    assert reply.json() == {"error": {"message": "gpt-9 is not a valid model ID", "code": 400}}
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, model="gpt-9")
    assert refused.value.body == {"message": "gpt-9 is not a valid model ID", "code": 400}
    assert ask(client).choices[0].message.content, "a served model still answers"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, None),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "yaml"},
            },
            "response_format.type",
        ),
    ],
)
def test_invalid_requests_are_400(url, body, param):
    reply = post_raw(url, body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_a_body_that_is_not_json_is_400(url):
    reply = requests.post(
        f"{url}/v1/chat/completions",
        data=b"{not json",
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        timeout=5,
    )
    assert reply.status_code == 400
    assert "could not parse the JSON body" in reply.json()["error"]["message"]


def test_a_key_is_required(url, app):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    assert post_raw(url, body, key=None).status_code == 401
    assert post_raw(url, body, key="anything").status_code == 200
    app.api_key = "sk-right-key-1234"
    wrong = post_raw(url, body, key="sk-wrong-key-9876")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong-key-9876" not in wrong.text, "the key is masked, as OpenAI does"
    assert post_raw(url, body, key="sk-right-key-1234").status_code == 200
    assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401


# --- faults -------------------------------------------------------------------------------


def test_rate_limit_has_openai_body_and_headers(client, app):
    app.faults.add("chat_completions", "error", status=429, retry_after=7, times=1)
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client)
    assert limited.value.body["code"] == "rate_limit_exceeded"
    assert limited.value.body["type"] == "requests"
    assert "Rate limit reached" in limited.value.body["message"]
    headers = limited.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "7s"
    assert ask(client).choices[0].message.content


def test_exhausted_quota_is_a_429_without_retry_after(client, app):
    app.faults.add("chat_completions", "error", status=429, usage_cap=True, times=1)
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client)
    assert limited.value.body["code"] == "insufficient_quota"
    assert "retry-after" not in limited.value.response.headers


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_have_openai_body(client, app, status):
    app.faults.add("chat_completions", "error", status=status, times=1)
    with pytest.raises(openai.InternalServerError) as failed:
        ask(client)
    assert failed.value.status_code == status
    assert failed.value.body["type"] == "server_error"


def test_models_endpoint_takes_faults_too(client, app):
    app.faults.add("models", "error", status=503, times=1)
    with pytest.raises(openai.InternalServerError):
        client.models.list()
    assert client.models.list().data


def test_hang_runs_into_the_client_timeout(url, app):
    app.faults.add("chat_completions", "hang", latency=5, times=1)
    hasty = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        ask(hasty)


# --- control API --------------------------------------------------------------------------


def test_control_api_switches_output_and_reports_state(url, client):
    seed = {
        "output_mode": "empty",
        "api_key": "sk-secret-value",
        "score": 0.5,
        "unknown_model_style": "openrouter",
    }
    assert requests.post(f"{url}/_sandbox/seed", json=seed, timeout=5).ok
    state = requests.get(f"{url}/_sandbox/state", timeout=5).json()
    assert state["output_mode"] == "empty"
    assert state["api_key_required"] is True
    assert state["unknown_model_style"] == "openrouter"
    assert "sk-secret-value" not in json.dumps(state)
    bad = requests.post(f"{url}/_sandbox/seed", json={"output_mode": "poetry"}, timeout=5)
    assert bad.status_code == 400
    bad = requests.post(f"{url}/_sandbox/seed", json={"unknown_model_style": "x"}, timeout=5)
    assert bad.status_code == 400
    assert requests.post(f"{url}/_sandbox/reset", timeout=5).ok
    assert ask(client).choices[0].message.content  # normal again, any key accepted
    state = requests.get(f"{url}/_sandbox/state", timeout=5).json()
    assert (state["output_mode"], state["api_key_required"]) == ("normal", False)
    assert state["unknown_model_style"] == "openai"
    assert len(state["completions"]) == 1
