"""The service as users reach it: the official ``openai`` Python client (pinned in pyproject's dev extra) against
``python -m serve.runner`` over real HTTP, serving a tiny model published to the real store (SeaweedFS).

One row per field or behaviour of docs/SERVICE.md's API table: what is honoured behaves as OpenAI's documentation
says (checked through the client's own types), what is refused raises ``openai.BadRequestError`` whose ``param``
names the field; auth and unknown models raise the client's ``AuthenticationError`` / ``NotFoundError`` with
OpenAI's codes; moderation blocks streamed and plain replies, their log-probabilities included."""

from __future__ import annotations

import hashlib
import json
import re

import openai
import pytest
from pydantic import BaseModel

from tests.test_serve import API_KEY, REFUSAL, blocklist_moderation, publish, runner_process, write_config

NAME = "tiny-openai"
MODEL = f"{NAME}:v1"
CAP = 16  # service.max_new_tokens
HELLO = [{"role": "user", "content": "Say hello"}]


class Service:
    def __init__(self, url: str, log, blocklist) -> None:
        self.url, self.log, self.blocklist = url, log, blocklist

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        # No retries: a 429/5xx must show up here, not be papered over by the client.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def service(s3_store, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai")
    publish(s3_store, tiny_model_dir, NAME, "v1")
    blocklist = tmp / "blocklist.txt"
    blocklist.write_text("# nothing blocked yet\n")
    config = write_config(tmp, NAME, s3_store, registry_poll_s=5, max_new_tokens=CAP,
                          moderation=blocklist_moderation(blocklist))
    with runner_process(config, tmp / "serve.log") as url:
        yield Service(url, tmp / "serve.log", blocklist)


@pytest.fixture(scope="module")
def client(service) -> openai.OpenAI:
    return service.client()


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(**{"model": MODEL, "messages": HELLO, "temperature": 0, **kw})


def streamed(client: openai.OpenAI, **kw) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(**{"model": MODEL, "messages": HELLO, "temperature": 0,
                                                    "stream": True, **kw}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_client_version_is_the_pinned_one():
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert f'"openai=={openai.__version__}"' in pyproject


def test_every_field_the_client_can_send_is_declared():
    """Each request and message field of the pinned client is in serve/schemas.py, so it is honoured or refused by
    name, never dropped as unknown: a client upgrade that adds a field fails here until the field is decided."""
    import typing

    from openai.types.chat import completion_create_params as params
    from openai.types.chat import (chat_completion_content_part_refusal_param as refusal_part,
                                   chat_completion_content_part_text_param as text_part)

    from serve.schemas import ChatMessage, ChatRequest, TextPart

    def keys(typed_dict) -> set[str]:
        return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)

    assert keys(params.CompletionCreateParamsStreaming) <= set(ChatRequest.model_fields)
    for message in typing.get_args(typing.get_type_hints(params.CompletionCreateParamsBase)["messages"])[0].__args__:
        assert keys(message) <= set(ChatMessage.model_fields), message.__name__
    for part in (text_part.ChatCompletionContentPartTextParam, refusal_part.ChatCompletionContentPartRefusalParam):
        assert keys(part) <= set(TextPart.model_fields), part.__name__


# -- models ----------------------------------------------------------------------------------------------------
def test_models_list_and_retrieve(client):
    [model] = client.models.list().data
    assert model.id == MODEL and model.object == "model" and model.owned_by == "harmgate"
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(NAME).id == MODEL  # the name alone means the served version
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found" and err.value.status_code == 404


# -- completions -----------------------------------------------------------------------------------------------
def test_chat_plain_and_streamed_agree_with_usage(client):
    reply = chat(client)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint and reply.system_fingerprint.startswith("fp_")

    text, chunks = streamed(client, stream_options={"include_usage": True})
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == choice.finish_reason
    assert all(c.usage is None for c in chunks[:-1]), "usage is null on every chunk but the last"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert any(c.obfuscation for c in chunks if c.choices and c.choices[0].delta.content)  # on by default
    _, plain_chunks = streamed(client, stream_options={"include_obfuscation": False})
    assert not any(c.obfuscation for c in plain_chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_max_completion_tokens_is_honoured(client, stream):
    if stream:
        _, chunks = streamed(client, max_completion_tokens=3, logprobs=True, stream_options={"include_usage": True})
        tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        finish, used = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), \
            chunks[-1].usage.completion_tokens
    else:
        reply = chat(client, max_completion_tokens=3, logprobs=True)
        tokens, finish, used = reply.choices[0].logprobs.content, reply.choices[0].finish_reason, \
            reply.usage.completion_tokens
    # The tiny model never says eos this early: it runs into the limit, and the tokens are counted twice over.
    assert (used, len(tokens), finish) == (3, 3, "length")
    assert chat(client, max_tokens=3).usage.completion_tokens == 3  # the older name too


def test_over_the_service_limit_names_the_field(client):
    for field in ("max_completion_tokens", "max_tokens"):
        with pytest.raises(openai.BadRequestError) as err:
            chat(client, **{field: CAP + 1})
        assert err.value.param == field and str(CAP) in err.value.message


def test_stop_strings(client):
    full = chat(client).choices[0].message.content
    stop = full[3:5]
    cut = chat(client, stop=[stop]).choices[0]
    assert cut.message.content == full[:full.find(stop)] and cut.finish_reason == "stop"
    text, _ = streamed(client, stop=stop)
    assert text == cut.message.content


def test_seed_makes_sampling_repeatable(client):
    first = chat(client, temperature=1.0, top_p=0.95, seed=1234).choices[0].message.content
    assert chat(client, temperature=1.0, top_p=0.95, seed=1234).choices[0].message.content == first
    assert streamed(client, temperature=1.0, top_p=0.95, seed=1234)[0] == first
    others = {chat(client, temperature=1.0, top_p=0.95, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert others - {first}, "different seeds all gave the same sample"


def test_logprobs_and_top_logprobs(client):
    reply = chat(client, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    # A token may hold part of a UTF-8 character: its bytes add up to the reply, its text ("bytes:\\x..") may not.
    assert b"".join(bytes(t.bytes) for t in tokens).decode("utf-8", "replace") == choice.message.content
    assert len(tokens) == reply.usage.completion_tokens - (choice.finish_reason == "stop")  # eos has no text
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.bytes
        assert t.token == bytes(t.bytes).decode("utf-8", "replace") or t.token.startswith("bytes:\\x")
        # greedy: the chosen token is the most likely one
        assert t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs))
    assert chat(client, logprobs=True).choices[0].logprobs.content[0].top_logprobs == []
    assert chat(client).choices[0].logprobs is None
    _, chunks = streamed(client, logprobs=True, top_logprobs=2)
    streamed_tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs
                       for t in c.choices[0].logprobs.content]
    assert streamed_tokens == [t.token for t in tokens]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, top_logprobs=2)
    assert err.value.param == "top_logprobs"


def test_content_parts_developer_role_and_user(client, service):
    plain = chat(client, messages=[{"role": "user", "content": "Say\nhello"}]).choices[0].message.content
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]
    assert chat(client, messages=[{"role": "user", "content": parts}]).choices[0].message.content == plain

    system = [{"role": "system", "content": "Be brief."}, *HELLO]
    developer = [{"role": "developer", "content": "Be brief."}, *HELLO]
    assert chat(client, messages=developer).choices[0].message.content == \
        chat(client, messages=system).choices[0].message.content

    end_user = "user-4417@example.com"
    reply = chat(client, user=end_user, safety_identifier="sid-4417")
    log = service.log.read_text()
    assert f"{reply.id} " in log and f"user={hashlib.sha256(b'sid-4417').hexdigest()[:12]}" in log
    assert end_user not in log and "sid-4417" not in log


class Answer(BaseModel):
    ok: bool


def test_structured_outputs(client):
    # The client's own structured-output helper: a json_schema (strict) built from a pydantic model.
    parsed = client.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Answer, temperature=1.0,
                                           seed=3)
    assert isinstance(parsed.choices[0].message.parsed, Answer)
    stops = 0
    for seed in range(4):
        reply = chat(client, response_format={"type": "json_object"}, temperature=1.0, seed=seed)
        content, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert content.startswith("{"), content
        if finish == "stop":
            stops += 1
            assert isinstance(json.loads(content), dict)
    assert stops, "no json_object reply ended on its own within the token limit"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, response_format={"type": "json_schema",
                                      "json_schema": {"name": "x", "schema": {"type": "strnig"}}})
    assert err.value.param == "response_format.json_schema.schema"


# -- refused fields ----------------------------------------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
REFUSED = [
    ({"tools": [TOOL]}, "tools"),
    ({"tools": [TOOL], "tool_choice": "required"}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"functions": [TOOL["function"]]}, "functions"),
    ({"n": 2}, "n"),
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [*HELLO, {"role": "tool", "content": "42", "tool_call_id": "call_1"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"prediction": {"type": "content", "content": "hello"}}, "prediction"),
    ({"store": True}, "store"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"extra_body": {"best_of": 3}}, "best_of"),  # not an OpenAI field at all
]


@pytest.mark.parametrize("kw, param", REFUSED, ids=[p for _, p in REFUSED])
def test_refused_fields_name_the_param(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, **kw)
    assert err.value.status_code == 400 and err.value.param == param, err.value.message
    assert err.value.type == "invalid_request_error"
    assert err.value.code in ("unsupported_parameter", "unknown_parameter"), err.value.code
    assert "not supported" in err.value.message or "unrecognized" in err.value.message


def test_neutral_values_of_refused_fields_are_accepted(client):
    reply = chat(client, tools=[], tool_choice="none", n=1, modalities=["text"], store=False,
                 service_tier="default", prompt_cache_key="k1", frequency_penalty=0, presence_penalty=0)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_penalties_and_logit_bias_change_the_reply(client):
    greedy = chat(client, logprobs=True).choices[0]
    first = greedy.logprobs.content[0]
    # A bias of -100 on the first token's id makes the model pick something else there.
    token_id = _token_id(client, first.token)
    biased = chat(client, logit_bias={str(token_id): -100}).choices[0].message.content
    assert not biased.startswith(first.token) or not first.token
    penalized = chat(client, frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert penalized != greedy.message.content or len(set(greedy.message.content)) > 10


def _token_id(client, token: str) -> int:
    from align.tiny import build_tiny_tokenizer

    ids = build_tiny_tokenizer().encode(token, add_special_tokens=False)
    assert len(ids) == 1, (token, ids)
    return ids[0]


# -- errors ----------------------------------------------------------------------------------------------------
def test_wrong_key_is_authentication_error(service):
    for key in ("wrong-key-0123456789abcdef", ""):
        with pytest.raises(openai.AuthenticationError) as err:
            chat(service.client(key=key or "x"))
        assert err.value.code == "invalid_api_key" and err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        service.client(key="wrong-key-0123456789abcdef").models.list()


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, model="gpt-4o")
    assert err.value.code == "model_not_found" and err.value.param == "model"


# -- moderation, in front of everything --------------------------------------------------------------------------
def _sent_text(chunks: list) -> str:
    """Every piece of model text the chunks carried: content deltas, tokens and their alternatives."""
    out = []
    for c in chunks:
        for choice in c.choices:
            out.append(choice.delta.content or "")
            for t in (choice.logprobs.content or []) if choice.logprobs else []:
                out += [t.token, bytes(t.bytes).decode("utf-8", "replace")]
                out += [a.token for a in t.top_logprobs] + [bytes(a.bytes).decode("utf-8", "replace")
                                                             for a in t.top_logprobs]
    return "\n".join(out).lower()


def _word_in(text: str) -> str:
    words = sorted(re.findall(r"[A-Za-z]{3,}", text), key=len, reverse=True)
    assert words, f"nothing to block in {text!r}"
    return words[0]


def test_moderation_blocks_plain_and_streamed_replies_and_their_logprobs(client, service):
    reply = chat(client, logprobs=True, top_logprobs=2).choices[0].message.content
    term = _word_in(reply)
    service.blocklist.write_text(f"{term}\n")
    try:
        blocked = chat(client, logprobs=True, top_logprobs=2).choices[0]
        assert blocked.finish_reason == "content_filter" and blocked.message.content == REFUSAL
        assert blocked.message.refusal == REFUSAL and blocked.logprobs is None

        text, chunks = streamed(client, logprobs=True, top_logprobs=2)
        assert term.lower() not in _sent_text(chunks[:-1]), "streaming leaked moderated text or its tokens"
        assert text.endswith(REFUSAL)
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        service.blocklist.write_text('"ok"\n')  # the key every Answer reply has
        with pytest.raises(openai.ContentFilterFinishReasonError):
            client.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Answer, temperature=0)
    finally:
        service.blocklist.write_text("# empty again\n")
    assert chat(client).choices[0].message.content == reply


def test_moderation_covers_the_alternative_tokens(client, service):
    """top_logprobs sends tokens the model did not choose; a blocked one among them blocks the reply."""
    choice = chat(client, logprobs=True, top_logprobs=5).choices[0]
    content = choice.message.content.lower()
    alternatives = [a.token.strip() for t in choice.logprobs.content for a in t.top_logprobs]
    term = next((a for a in alternatives if re.fullmatch(r"[A-Za-z]{3,}", a) and a.lower() not in content), None)
    assert term, f"no alternative token to block among {alternatives}"
    service.blocklist.write_text(f"{term}\n")
    try:
        assert chat(client).choices[0].finish_reason != "content_filter"  # the reply alone passes
        for stream in (False, True):
            if stream:
                _, chunks = streamed(client, logprobs=True, top_logprobs=5)
                assert term.lower() not in _sent_text(chunks[:-1])
                assert chunks[-1].choices[0].finish_reason == "content_filter"
            else:
                assert chat(client, logprobs=True, top_logprobs=5).choices[0].finish_reason == "content_filter"
    finally:
        service.blocklist.write_text("# empty again\n")
