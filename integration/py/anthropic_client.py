"""Drives an llmtrace proxy with the official `anthropic` Python client.

Used by integration/tests/it/proxy_anthropic.rs; prints one JSON object on
stdout.

    anthropic_client.py basic BASE_URL API_KEY
    anthropic_client.py until-limited BASE_URLS API_KEY MAX_CALLS [MODEL]

BASE_URLS of until-limited: one URL, or several separated by commas (calls
go round robin).
    anthropic_client.py count-tokens BASE_URL API_KEY CALLS
    anthropic_client.py status BASE_URL API_KEY MODEL MAX_TOKENS
"""

import json
import sys
import uuid

import anthropic
from anthropic import Anthropic

MODEL = "claude-sonnet-4-5"
# Usage the stub reports: 40 input, 60 output, 200 read from the cache,
# 100 written to it.
STUB = {"x-stub-usage": "40,60", "x-stub-cache": "200,100"}


def client(base, key):
    # No retries: a 429 must surface as RateLimitError, not be waited out.
    return Anthropic(base_url=base.rstrip("/"), api_key=key, max_retries=0, timeout=30)


def messages():
    return [{"role": "user", "content": "hello world"}]


def limit_headers(headers):
    return {k: v for k, v in headers.items() if k.startswith("anthropic-ratelimit") or k.startswith("retry-after")}


def usage(u):
    return {
        "input": u.input_tokens,
        "output": u.output_tokens,
        "cache_read": u.cache_read_input_tokens,
        "cache_creation": u.cache_creation_input_tokens,
    }


def basic(base, key):
    c = client(base, key)
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=messages(), extra_headers=STUB
    )
    msg = raw.parse()
    with c.messages.stream(
        model=MODEL, max_tokens=100, messages=messages(), extra_headers=STUB
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    counted = c.messages.count_tokens(model=MODEL, messages=messages(), extra_headers=STUB)
    return {
        "tenant": str(uuid.uuid5(uuid.NAMESPACE_OID, key)),
        "content": msg.content[0].text,
        "usage": usage(msg.usage),
        "headers": limit_headers(raw.headers),
        "stream_content": text,
        "stream_usage": usage(final.usage),
        "count_tokens": counted.input_tokens,
    }


def until_limited(bases, key, max_calls, model=MODEL):
    cs = [client(b, key) for b in bases.split(",")]
    allowed = 0
    for i in range(max_calls):
        try:
            cs[i % len(cs)].messages.create(
                model=model,
                max_tokens=100,
                messages=messages(),
                extra_headers={"x-stub-usage": "40,60"},
            )
            allowed += 1
        except anthropic.RateLimitError as e:
            return {
                "allowed": allowed,
                "status": e.status_code,
                "error": e.body,
                "headers": limit_headers(e.response.headers),
            }
    return {"allowed": allowed, "status": None}


def count_tokens(base, key, calls):
    c = client(base, key)
    counts = [
        c.messages.count_tokens(model=MODEL, messages=messages(), extra_headers=STUB).input_tokens
        for _ in range(calls)
    ]
    return {"counts": counts}


def status(base, key, model, max_tokens):
    """One call expected to fail: the status and body of the APIStatusError."""
    c = client(base, key)
    try:
        c.messages.create(model=model, max_tokens=max_tokens, messages=messages())
    except anthropic.APIStatusError as e:
        return {
            "status": e.status_code,
            "error": e.body,
            "class": type(e).__name__,
            "tenant": str(uuid.uuid5(uuid.NAMESPACE_OID, key)),
        }
    return {"status": 200}


def main():
    cmd, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "basic":
        out = basic(base, key)
    elif cmd == "until-limited":
        out = until_limited(base, key, int(sys.argv[4]), *sys.argv[5:6])
    elif cmd == "count-tokens":
        out = count_tokens(base, key, int(sys.argv[4]))
    elif cmd == "status":
        out = status(base, key, sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
