"""Drives an llmtrace proxy with the official `openai` Python client.

Used by integration/tests/proxy_openai.rs; prints one JSON object on stdout.

    openai_client.py basic BASE_URL API_KEY
    openai_client.py until-limited BASE_URL API_KEY MAX_CALLS
    openai_client.py round-robin BASE_URL[,BASE_URL...] API_KEY CALLS STREAM(0|1)
    openai_client.py responses BASE_URL API_KEY
"""

import json
import sys
import uuid

import openai
from openai import OpenAI

USAGE = {"x-stub-usage": "40,60"}


def client(base, key):
    # No retries: a 429 must surface as RateLimitError, not be waited out.
    return OpenAI(base_url=base.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=30)


def messages():
    return [{"role": "user", "content": "hello world"}]


def basic(base, key):
    c = client(base, key)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages(), max_tokens=100, extra_headers=USAGE
    )
    chat = raw.parse()
    chunks = []
    usage_chunks = 0
    stream = c.chat.completions.create(
        model="gpt-4o", messages=messages(), max_tokens=100, stream=True, extra_headers=USAGE
    )
    for ch in stream:
        if ch.usage is not None:
            usage_chunks += 1
        for choice in ch.choices:
            if choice.delta.content:
                chunks.append(choice.delta.content)
    asked = c.chat.completions.create(
        model="gpt-4o",
        messages=messages(),
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=USAGE,
    )
    asked_usage = [ch.usage.total_tokens for ch in asked if ch.usage is not None]
    emb = c.embeddings.create(model="text-embedding-3-small", input="hello world")
    return {
        "content": chat.choices[0].message.content,
        "usage_total": chat.usage.total_tokens,
        "headers": {k: v for k, v in raw.headers.items() if k.startswith("x-ratelimit")},
        "stream_content": "".join(chunks),
        "stream_usage_chunks": usage_chunks,
        "asked_usage": asked_usage,
        "embedding": emb.data[0].embedding,
    }


def until_limited(base, key, max_calls):
    c = client(base, key)
    allowed = 0
    for _ in range(max_calls):
        try:
            c.chat.completions.create(
                model="gpt-4o", messages=messages(), max_tokens=100, extra_headers=USAGE
            )
            allowed += 1
        except openai.RateLimitError as e:
            return {
                "allowed": allowed,
                "status": e.status_code,
                "error": e.body,
                "headers": dict(e.response.headers),
            }
    return {"allowed": allowed, "status": None}


def round_robin(bases, key, calls, stream):
    clients = [client(b, key) for b in bases.split(",")]
    allowed = refused = 0
    for i in range(calls):
        c = clients[i % len(clients)]
        try:
            if stream:
                for _ in c.chat.completions.create(
                    model="gpt-4o",
                    messages=messages(),
                    max_tokens=100,
                    stream=True,
                    extra_headers=USAGE,
                ):
                    pass
            else:
                c.chat.completions.create(
                    model="gpt-4o", messages=messages(), max_tokens=100, extra_headers=USAGE
                )
            allowed += 1
        except openai.RateLimitError:
            refused += 1
    return {"allowed": allowed, "refused": refused}


def responses(base, key):
    """A Responses call, streamed and not, and an embedding; the stub
    reports 40 input (+ 30 cached) and 60 output tokens, 7 for the
    embedding."""
    c = client(base, key)
    stub = {"x-stub-usage": "40,60", "x-stub-cache": "30,0"}
    resp = c.responses.create(
        model="gpt-4o", input="hello world", max_output_tokens=100, extra_headers=stub
    )
    deltas = []
    completed = None
    for ev in c.responses.create(
        model="gpt-4o", input="hello world", max_output_tokens=100, stream=True, extra_headers=stub
    ):
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
        elif ev.type == "response.completed":
            completed = ev.response.usage
    emb = c.embeddings.create(
        model="text-embedding-3-small", input="hello world", extra_headers={"x-stub-usage": "7,0"}
    )
    return {
        "tenant": str(uuid.uuid5(uuid.NAMESPACE_OID, key)),
        "text": resp.output_text,
        "usage": [resp.usage.input_tokens, resp.usage.input_tokens_details.cached_tokens, resp.usage.output_tokens],
        "stream_text": "".join(deltas),
        "stream_total": completed.total_tokens,
        "embedding_tokens": emb.usage.prompt_tokens,
    }


def main():
    cmd = sys.argv[1]
    if cmd == "basic":
        out = basic(sys.argv[2], sys.argv[3])
    elif cmd == "until-limited":
        out = until_limited(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "round-robin":
        out = round_robin(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
    elif cmd == "responses":
        out = responses(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
