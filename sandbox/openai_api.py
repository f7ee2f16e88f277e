"""An OpenAI-compatible chat completions server, as the ``openai`` library sees one.

Serves ``/v1/chat/completions`` and ``/v1/models`` with OpenAI's request validation,
response shapes, headers and error bodies. The "model" answers deterministically from
the prompt (a hash of the last user message picks words and a template), so tests can
assert on replies, and it can be told to misbehave the ways real models do:

- ``output_mode`` ``normal``; ``empty`` (no text); ``overlong`` (far over 280
  characters); ``quoted`` (the reply wrapped in quotes or behind a ``Reply:`` label);
  ``non_json`` (prose even when a JSON schema was asked for); ``truncated`` (cut off
  mid-string with ``finish_reason`` ``length``); ``refusal`` (a safety refusal);
  ``lone_surrogate`` (half an emoji, a lone high surrogate, after each reply: sent as a
  ``\ud83d`` escape, so the client decodes it into a str no codec can encode; inside
  a JSON answer the escape is in the model's own JSON text); ``nul`` (a NUL character
  inside each reply);
- ``unknown_model_style``: how a chat completion for a model not in ``models`` is
  refused: ``openai`` (404 ``model_not_found``, as OpenAI, Groq and vLLM do) or
  ``openrouter`` (400 ``"<model> is not a valid model ID"``);
- ``json_schema_supported = False``: refuse ``response_format`` ``json_schema`` with a
  400, as older models and some local servers do;
- ``api_key``: when set, only that bearer token is accepted (any key otherwise);
- ``scripted_replies``: reply texts served first, in order, before generated ones;
- ``score``: the value of every number the model produces (hash-derived when None).

Service failures (429, 5xx, hangs, HTML pages, truncated bodies) come from the
inherited ``faults`` on the endpoints ``chat_completions`` and ``models``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

from sandbox.faults import Fault
from sandbox.http import App, Request, Response, json_response

__all__ = ["DEFAULT_MODELS", "OUTPUT_MODES", "UNKNOWN_MODEL_STYLES", "OpenAIApp"]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "sandbox-model")
OUTPUT_MODES = (
    "normal",
    "empty",
    "overlong",
    "quoted",
    "non_json",
    "truncated",
    "refusal",
    "lone_surrogate",
    "nul",
)
UNKNOWN_MODEL_STYLES = ("openai", "openrouter")

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_MODEL_CREATED = 1_721_172_741
_CHARS_PER_TOKEN = 4
_NUMBER_PROMPT = re.compile(r"number between 0(?:\.0)? and 1", re.IGNORECASE)
# A tagged block with no second opening of the same tag inside: the innermost one.
_BLOCK = re.compile(r"<(\w+)(?:\s[^>]*)?>((?:(?!<\1[\s>]).)*?)</\1>", re.DOTALL)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_STOPWORD_TEXT = (
    "about above after again also because been before being below between both could does"
    " doing down during each every from further getting going have having here into just"
    " know make more most must only other over really same should some such than that"
    " their them then there these they thing think this those through under until very"
    " were what when where which while will with would your yours like post reply"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TEMPLATES = (
    "Really like the point about {a}. {B} is where most people get it wrong.",
    "{A} and {b} together? That's the part I'd love to hear more about.",
    "Agree on {a}, though I'd push back a little on {b}.",
    "Good take on {a}. Curious how {b} fits into it.",
    "Saving this one. The bit on {a} is spot on.",
    "Hadn't thought about {a} that way. Does {b} change the picture?",
)
_FILLER = (
    " To expand on that at some length, because nuance matters here: the history of {a}"
    " is long, the trade-offs around {b} are real, and anyone who has worked on this"
    " knows that the details decide everything."
)
_QUOTES = ('"{}"', "\u201c{}\u201d", 'Reply: "{}"', "'{}'")
_REFUSAL = "I'm sorry, but I can't help with that request."
_HALF_EMOJI = "\ud83d"  # the first half of U+1F600's UTF-16 pair, as a cut-off token leaves it


class OpenAIApp(App):
    name = "openai"

    def __init__(
        self,
        *,
        seed: int = 0,
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
        api_key: str | None = None,
        placeholder: str = "",
    ) -> None:
        super().__init__(seed=seed)
        # Put before every composed text (``manage.py sandbox`` marks its drafts with it).
        self.placeholder = placeholder
        self._default_models = tuple(models)
        self._default_api_key = api_key
        self.completions: list[dict[str, Any]] = []  # request bodies, in order, for tests
        self._ids = itertools.count(1)
        self._configure_defaults()

        @self.route("POST", "/v1/chat/completions", name="chat_completions")
        def chat_completions(request: Request) -> Response:
            return self._chat_completions(request)

        @self.route("GET", "/v1/models", name="models")
        def list_models(request: Request) -> Response:
            return self._authenticate(request) or json_response(
                {"object": "list", "data": [self._model(model) for model in self.models]},
                headers=self._headers(),
            )

        @self.route("GET", "/v1/models/{model}", name="models")
        def retrieve_model(request: Request, model: str) -> Response:
            denied = self._authenticate(request)
            if denied is not None:
                return denied
            if model not in self.models:
                return _model_not_found(model)
            return json_response(self._model(model), headers=self._headers())

    def _configure_defaults(self) -> None:
        self.models: list[str] = list(self._default_models)
        self.api_key: str | None = self._default_api_key
        self.output_mode = "normal"
        self.json_schema_supported = True
        self.scripted_replies: list[str] = []
        self.score: float | None = None
        self.unknown_model_style = "openai"

    # --- App hooks ------------------------------------------------------------------------

    def error_response(self, status: int, fault: Fault) -> Response:
        if status == 429 and fault.usage_cap:
            # Billing, not pace: OpenAI sends no retry-after for an exhausted quota.
            return _error(
                429,
                "You exceeded your current quota, please check your plan and billing details."
                " For more information on this error, read the docs:"
                " https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                code="insufficient_quota",
            )
        if status == 429:
            wait = fault.retry_after
            return _error(
                429,
                f"Rate limit reached for {self.models[0] if self.models else 'model'} in"
                " organization org-sandbox on requests per min (RPM): Limit 500, Used 500,"
                f" Requested 1. Please try again in {wait}s. Visit"
                " https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                code="rate_limit_exceeded",
                headers={
                    "retry-after": str(wait),
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait}s",
                    "x-ratelimit-limit-tokens": "200000",
                    "x-ratelimit-remaining-tokens": "199000",
                    "x-ratelimit-reset-tokens": "300ms",
                },
            )
        if status == 503:
            return _error(
                503, "The engine is currently overloaded, please try again later.", "server_error"
            )
        if status >= 500:
            return _error(
                status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if status == 404 and fault.endpoint == "*":
            return _error(404, "Invalid URL", "invalid_request_error")
        return _error(status, f"Injected error {status}.", "invalid_request_error")

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self.completions.clear()
            self._configure_defaults()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "models": list(self.models),
                "output_mode": self.output_mode,
                "json_schema_supported": self.json_schema_supported,
                "api_key_required": self.api_key is not None,  # never the key itself
                "scripted_replies": list(self.scripted_replies),
                "score": self.score,
                "unknown_model_style": self.unknown_model_style,
                "completions": [dict(body) for body in self.completions],
            }

    def seed_state(self, data: dict[str, Any]) -> None:
        """Set any of ``models``, ``output_mode``, ``json_schema_supported``,
        ``api_key``, ``scripted_replies``, ``score``, ``unknown_model_style``."""
        unknown = set(data) - {
            "models",
            "output_mode",
            "json_schema_supported",
            "api_key",
            "scripted_replies",
            "score",
            "unknown_model_style",
        }
        if unknown:
            raise ValueError(f"cannot seed {', '.join(sorted(unknown))}")
        mode = data.get("output_mode", self.output_mode)
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {mode!r}: one of {', '.join(OUTPUT_MODES)}")
        style = data.get("unknown_model_style", self.unknown_model_style)
        if style not in UNKNOWN_MODEL_STYLES:
            raise ValueError(
                f"unknown unknown_model_style {style!r}: one of {', '.join(UNKNOWN_MODEL_STYLES)}"
            )
        with self.lock:
            self.output_mode = mode
            self.unknown_model_style = style
            if "models" in data:
                self.models = [str(model) for model in data["models"]]
            if "json_schema_supported" in data:
                self.json_schema_supported = bool(data["json_schema_supported"])
            if "api_key" in data:
                self.api_key = data["api_key"]
            if "scripted_replies" in data:
                self.scripted_replies = [str(text) for text in data["scripted_replies"]]
            if "score" in data:
                self.score = None if data["score"] is None else float(data["score"])

    def control(self, request: Request) -> Response:
        try:
            return super().control(request)
        except ValueError as exc:  # a bad seed is the caller's mistake, not a crash
            return json_response({"error": str(exc)}, 400)

    # --- chat completions -----------------------------------------------------------------

    def _chat_completions(self, request: Request) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means"
                " you aren't using your HTTP library correctly. The OpenAI API expects a JSON"
                " payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
            )
        with self.lock:
            self.completions.append(body)
            mode = self.output_mode
        invalid = self._validate(body)
        if invalid is not None:
            return invalid
        completion = self._completion(body, mode)
        if body.get("stream"):
            return _stream(completion, body)
        return json_response(completion, headers=self._headers())

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY),"
                " or as the password field (with blank username) if you're accessing the API"
                " from your browser and are prompted for a username and password. You can"
                " obtain an API key from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
            )
        if self.api_key is not None and key.strip() != self.api_key:
            return _error(
                401,
                f"Incorrect API key provided: {_mask(key.strip())}. You can find your API key"
                " at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None

    def _validate(self, body: dict[str, Any]) -> Response | None:
        model = body.get("model")
        if not model:
            return _error(400, "you must provide a model parameter", "invalid_request_error")
        if "messages" not in body:
            return _invalid("Missing required parameter: 'messages'.", "messages", "missing")
        messages = body["messages"]
        if not isinstance(messages, list):
            return _invalid(
                "Invalid type for 'messages': expected an array, but got"
                f" {_json_type(messages)} instead.",
                "messages",
                "invalid_type",
            )
        if not messages:
            return _invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1,"
                " but got an empty array instead.",
                "messages",
                "empty_array",
            )
        for index, message in enumerate(messages):
            problem = _message_problem(index, message)
            if problem is not None:
                return problem
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
            return _invalid(
                f"Invalid 'n': expected an integer between 1 and 128, but got {n!r} instead.",
                "n",
                "invalid_value",
            )
        temperature = body.get("temperature")
        if temperature is not None and not (
            isinstance(temperature, int | float) and 0 <= temperature <= 2
        ):
            return _invalid(
                f"Invalid 'temperature': expected a number between 0 and 2, got {temperature!r}.",
                "temperature",
                "invalid_value",
            )
        format_problem = self._format_problem(body.get("response_format"), messages)
        if format_problem is not None:
            return format_problem
        if model not in self.models:  # after the body checks, as OpenAI orders them
            if self.unknown_model_style == "openrouter":
                # OpenRouter's body: no type or param, and the status repeated as the code.
                return json_response(
                    {"error": {"message": f"{model} is not a valid model ID", "code": 400}}, 400
                )
            return _model_not_found(str(model))
        return None

    def _format_problem(self, fmt: Any, messages: list[Any]) -> Response | None:
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            return _invalid(
                f"Invalid value: {kind!r}. Supported values are: 'json_object', 'json_schema',"
                " and 'text'.",
                "response_format.type",
                "invalid_value",
            )
        if kind == "json_object" and not any(
            "json" in _text(message.get("content")).lower() for message in messages
        ):
            return _invalid(
                "'messages' must contain the word 'json' in some form, to use 'response_format'"
                " of type 'json_object'.",
                "messages",
                None,
            )
        if kind != "json_schema":
            return None
        if not self.json_schema_supported:
            return _invalid(
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported"
                " with this model. Learn more about supported models at the Structured Outputs"
                " guide: https://platform.openai.com/docs/guides/structured-outputs",
                "response_format",
                None,
            )
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            return _invalid(
                "Missing required parameter: 'response_format.json_schema'.",
                "response_format.json_schema",
                "missing",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            return _invalid(
                "Invalid 'response_format.json_schema.name': string does not match pattern."
                " Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                "response_format.json_schema.name",
                "invalid_value",
            )
        schema = spec.get("schema", {})
        if spec.get("strict"):
            problem = _strict_problem(schema, ())
            if problem is not None:
                return _invalid(
                    f"Invalid schema for response_format '{name}': {problem}",
                    "response_format",
                    "invalid_json_schema",
                )
        return None

    def _completion(self, body: dict[str, Any], mode: str) -> dict[str, Any]:
        model = str(body["model"])
        messages: list[dict[str, Any]] = body["messages"]
        prompt = _last_user_text(messages)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        choices = [
            self._choice(index, body, prompt, mode, limit) for index in range(body.get("n") or 1)
        ]
        prompt_tokens = sum(_tokens(_text(message.get("content"))) + 4 for message in messages)
        completion_tokens = sum(_tokens(choice["message"]["content"] or "") for choice in choices)
        number = next(self._ids)
        digest = hashlib.sha256(f"{number}:{prompt}".encode()).hexdigest()
        return {
            "id": f"chatcmpl-{digest[:29]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10],
        }

    def _choice(
        self, index: int, body: dict[str, Any], prompt: str, mode: str, limit: Any
    ) -> dict[str, Any]:
        content, finish_reason, refusal = self._answer(index, body, prompt, mode)
        if (
            isinstance(limit, int)
            and content
            and finish_reason == "stop"
            and _tokens(content) > limit
        ):
            content, finish_reason = content[: limit * _CHARS_PER_TOKEN], "length"
        return {
            "index": index,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": refusal,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": finish_reason,
        }

    def _answer(
        self, index: int, body: dict[str, Any], prompt: str, mode: str
    ) -> tuple[str | None, str, str | None]:
        """(content, finish_reason, refusal) of one choice."""
        if mode == "refusal":
            return None, "stop", _REFUSAL
        if mode == "empty":
            return "", "stop", None
        writer = _Writer(self, prompt, f"{body['model']}:{index}", mode)
        fmt = body.get("response_format") or {"type": "text"}
        asks_number = any(
            _NUMBER_PROMPT.search(_text(message.get("content"))) for message in body["messages"]
        )
        if fmt["type"] == "json_schema":
            value = writer.value(fmt["json_schema"].get("schema") or {})
        elif fmt["type"] == "json_object":
            value = {"score": writer.number({})} if asks_number else {"reply": writer.text()}
        else:
            value = writer.number({}) if asks_number else writer.text()
        if isinstance(value, str | int | float):  # plain text
            content = str(value)
            if mode == "truncated":
                return content[: max(1, len(content) // 2)], "length", None
            return content, "stop", None
        if mode == "non_json":
            return _prose(value), "stop", None
        # A model escaping non-ASCII writes half an emoji as a "\ud83d" escape in its JSON.
        content = json.dumps(value, ensure_ascii=mode == "lone_surrogate")
        if mode == "truncated":
            return _cut_mid_string(content), "length", None
        return content, "stop", None

    def _pop_scripted(self) -> str | None:
        with self.lock:
            return self.scripted_replies.pop(0) if self.scripted_replies else None

    # --- models ---------------------------------------------------------------------------

    def _model(self, model: str) -> dict[str, Any]:
        owner = "system" if model.startswith(("gpt-", "o1", "o3", "o4")) else "sandbox"
        return {"id": model, "object": "model", "created": _MODEL_CREATED, "owned_by": owner}

    def _headers(self) -> dict[str, str]:
        """The headers OpenAI sends on every success."""
        return {
            "x-request-id": "req_" + hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:32],
            "openai-organization": "org-sandbox",
            "openai-processing-ms": "42",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199000",
            "x-ratelimit-reset-tokens": "300ms",
        }


class _Writer:
    """Produces one choice's values: texts from the prompt's words, numbers from its hash."""

    def __init__(self, app: OpenAIApp, prompt: str, salt: str, mode: str) -> None:
        self.app = app
        self.prompt = prompt
        self.salt = salt
        self.mode = mode
        self.count = 0
        self.words = _keywords(prompt)

    def _digest(self, what: str) -> int:
        data = f"{self.salt}:{what}:{self.count}:{self.prompt}".encode()
        return int(hashlib.sha256(data).hexdigest()[:12], 16)

    def text(self) -> str:
        scripted = self.app._pop_scripted()
        digest = self._digest("text")
        self.count += 1
        text = scripted if scripted is not None else self._compose(digest)
        if self.mode == "overlong":
            a, b = self._pick(digest)
            text += _FILLER.format(a=a, b=b) * 2
        if self.mode == "quoted":
            text = _QUOTES[digest % len(_QUOTES)].format(text)
        if self.mode == "lone_surrogate":
            text += " " + _HALF_EMOJI
        if self.mode == "nul":
            text = text.replace(" ", " \x00", 1)
        return text

    def _pick(self, digest: int) -> tuple[str, str]:
        words = self.words or ["this", "that"]
        a = words[digest % len(words)]
        others = [word for word in words if word != a] or ["that"]
        return a, others[(digest // 7) % len(others)]

    def _compose(self, digest: int) -> str:
        a, b = self._pick(digest)
        template = _TEMPLATES[(digest // 49) % len(_TEMPLATES)]
        return self.app.placeholder + template.format(a=a, b=b, A=a.capitalize(), B=b.capitalize())

    def number(self, schema: dict[str, Any]) -> float:
        low = float(schema.get("minimum", 0.0))
        high = float(schema.get("maximum", 1.0 if low < 1 else low + 100))
        if self.app.score is not None:
            return self.app.score
        fraction = self._digest("number") / 0xFFFFFFFFFFFF
        self.count += 1
        return round(low + fraction * (high - low), 2)

    def value(self, schema: dict[str, Any]) -> Any:
        """A value conforming to ``schema`` (the subset structured outputs allow)."""
        if "enum" in schema:
            options = schema["enum"]
            return options[self._digest("enum") % len(options)] if options else None
        if "anyOf" in schema:
            return self.value(schema["anyOf"][0])
        kind = schema.get("type", "object")
        if isinstance(kind, list):
            kind = next((item for item in kind if item != "null"), "null")
        if kind == "object":
            properties = schema.get("properties") or {}
            return {key: self.value(sub) for key, sub in properties.items()}
        if kind == "array":
            low = int(schema.get("minItems", 1))
            count = min(max(low, 1), int(schema.get("maxItems", max(low, 1))))
            return [self.value(schema.get("items") or {"type": "string"}) for _ in range(count)]
        if kind == "string":
            return self.text()
        if kind == "integer":
            return math.floor(self.number({"minimum": 0, "maximum": 100, **schema}))
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self._digest("boolean") % 2 == 0
        return None


# --- helpers ------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_response(body, status, headers)


def _invalid(message: str, param: str | None, code: str | None) -> Response:
    if code == "missing":
        code = "missing_required_parameter"
    return _error(400, message, "invalid_request_error", param=param, code=code)


def _model_not_found(model: str) -> Response:
    return _error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def _message_problem(index: int, message: Any) -> Response | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return _invalid(
            f"Invalid type for '{where}': expected an object, but got {_json_type(message)}"
            " instead.",
            where,
            "invalid_type",
        )
    role = message.get("role")
    if role is None:
        return _invalid(f"Missing required parameter: '{where}.role'.", f"{where}.role", "missing")
    if role not in ROLES:
        return _invalid(
            f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', 'user',"
            " 'function', 'tool', and 'developer'.",
            f"{where}.role",
            "invalid_value",
        )
    content = message.get("content")
    if "content" not in message or (content is None and role != "assistant"):
        return _invalid(
            f"Missing required parameter: '{where}.content'.", f"{where}.content", "missing"
        )
    if content is not None and not isinstance(content, str | list):
        return _invalid(
            f"Invalid type for '{where}.content': expected one of a string or array of"
            f" objects, but got {_json_type(content)} instead.",
            f"{where}.content",
            "invalid_type",
        )
    return None


def _strict_problem(schema: Any, context: tuple[str, ...]) -> str | None:
    """What strict structured outputs refuse in ``schema``, or None."""
    if not isinstance(schema, dict):
        return f"In context={context}, schema must be an object."
    if not context and schema.get("type") != "object":
        return (
            "schema must be a JSON Schema of 'type: \"object\"', got"
            f" 'type: \"{schema.get('type')}\"'."
        )
    if schema.get("type") == "object":
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={context}, 'additionalProperties' is required to be supplied"
                " and to be false."
            )
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an"
                f" array including every key in properties. Missing '{missing[0]}'."
            )
        for key, sub in properties.items():
            problem = _strict_problem(sub, (*context, "properties", key))
            if problem is not None:
                return problem
    if schema.get("type") == "array" and "items" in schema:
        return _strict_problem(schema["items"], (*context, "items"))
    return None


def _text(content: Any) -> str:
    """A message's text, whether a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return _text(messages[-1].get("content"))


def _keywords(prompt: str) -> list[str]:
    """Words worth replying about: those inside a delimited block when there is one
    (where a careful prompt puts the post), else the whole message."""
    blocks = [match.group(2) for match in _BLOCK.finditer(prompt)]
    source = " ".join(blocks) if blocks else prompt
    seen: dict[str, None] = {}
    for word in _WORD.findall(source):
        word = word.strip("'-").lower()
        if len(word) >= 4 and word not in _STOPWORDS:
            seen.setdefault(word, None)
    # The longest words tend to carry the topic; sorted() is stable, so ties keep their order.
    return sorted(seen, key=len, reverse=True)[:6]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / _CHARS_PER_TOKEN)) if text else 0


def _prose(value: Any) -> str:
    """What a model that ignored the schema says instead: the leaves, as prose or a list."""
    leaves: list[str] = []

    def collect(item: Any) -> None:
        if isinstance(item, dict):
            for sub in item.values():
                collect(sub)
        elif isinstance(item, list):
            for sub in item:
                collect(sub)
        elif item is not None:
            leaves.append(str(item))

    collect(value)
    if len(leaves) == 1:
        return leaves[0]
    return "Here are a few options:\n" + "\n".join(
        f"{number}. {leaf}" for number, leaf in enumerate(leaves, 1)
    )


def _cut_mid_string(content: str) -> str:
    """JSON cut off inside its first string value, as a model hitting max_tokens leaves it."""
    match = re.search(r'[\[:]\s*"', content)
    if match is None:
        return content[: max(1, len(content) // 2)]
    start = match.end()
    end = content.find('"', start)
    length = (end if end > start else len(content)) - start
    return content[: start + max(1, length // 2)]


def _stream(completion: dict[str, Any], body: dict[str, Any]) -> Response:
    """The completion as server-sent events, as ``stream: true`` gets it."""
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunks() -> Iterator[dict[str, Any]]:
        for choice in completion["choices"]:
            index, message = choice["index"], choice["message"]
            delta_start = {"role": "assistant", "content": "", "refusal": None}
            yield {**base, "choices": [_delta(index, delta_start, None)]}
            content = message["content"] or ""
            for start in range(0, len(content), 16):
                delta = {"content": content[start : start + 16]}
                yield {**base, "choices": [_delta(index, delta, None)]}
            yield {**base, "choices": [_delta(index, {}, choice["finish_reason"])]}
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {**base, "choices": [], "usage": completion["usage"]}

    events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks()) + "data: [DONE]\n\n"
    return Response(200, events.encode(), {"Content-Type": "text/event-stream; charset=utf-8"})


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _mask(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)
