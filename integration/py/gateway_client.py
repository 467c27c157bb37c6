"""Drives an llmtrace proxy with gateway rules through the official `openai`
Python client. Used by integration/tests/it/proxy_rules.rs; prints one JSON
object on stdout. BASES is a comma-separated list of proxy URLs, used round
robin (every call may land on another node).

    gateway_client.py until-limited BASES KEY MODEL MAX_CALLS [CACHED]
    gateway_client.py calls BASES KEY MODEL N [HEADER=VALUE]
    gateway_client.py inflight BASES KEY STUB_URL
    gateway_client.py leak BASES KEY STUB_URL CALLS SEED
"""

import json
import random
import sys
import threading
import time
import urllib.request

import openai
from openai import OpenAI

USAGE = {"x-stub-usage": "40,60"}
WAIT_S = 20


def clients(bases, keys):
    """A client per (key, base): KEYS is a comma-separated list too."""
    # No retries: a 429 must surface as RateLimitError, not be waited out.
    return [
        OpenAI(base_url=b.rstrip("/") + "/v1", api_key=k, max_retries=0, timeout=30)
        for b in bases.split(",")
        for k in keys.split(",")
    ]


def messages():
    return [{"role": "user", "content": "hello world"}]


def chat(c, model, headers, stream=False):
    return c.chat.completions.with_raw_response.create(
        model=model, messages=messages(), max_tokens=100, extra_headers=headers, stream=stream
    )


def refusal(e):
    return {
        "status": e.status_code,
        "error": e.body,
        "headers": {k: v for k, v in e.response.headers.items()},
    }


def until_limited(bases, key, model, max_calls, cached):
    cs = clients(bases, key)
    headers = dict(USAGE)
    if cached:
        # All of the prompt read from the cache: none uncached, `cached` read.
        headers["x-stub-usage"] = "0," + USAGE["x-stub-usage"].split(",")[1]
        headers["x-stub-cache"] = cached + ",0"
    allowed = 0
    for i in range(max_calls):
        try:
            chat(cs[i % len(cs)], model, headers).parse()
            allowed += 1
        except openai.RateLimitError as e:
            return {"allowed": allowed, **refusal(e)}
    return {"allowed": allowed, "status": None}


def calls(bases, key, model, n, extra):
    cs = clients(bases, key)
    headers = dict(USAGE)
    if extra:
        name, value = extra.split("=", 1)
        headers[name] = value
    out = []
    for i in range(n):
        try:
            raw = chat(cs[i % len(cs)], model, headers)
            raw.parse()
            out.append({"status": 200, "shadow": raw.headers.get("x-llmtrace-shadow-refused")})
        except openai.RateLimitError as e:
            out.append(refusal(e))
    return {"calls": out}


def release(stub, gate):
    req = urllib.request.Request(f"{stub}/stub/release/{gate}", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def open_stream(c, gate):
    """A stream held open upstream (gated after its first content chunk)."""
    stream = c.chat.completions.create(
        model="gpt-4o",
        messages=messages(),
        max_tokens=100,
        stream=True,
        extra_headers={**USAGE, "x-stub-gate": gate},
    )
    it = iter(stream)
    next(it)
    next(it)
    return stream, it


def try_call(c):
    try:
        chat(c, "gpt-4o", USAGE).parse()
        return None
    except openai.RateLimitError as e:
        return refusal(e)


def passes_within(c, seconds):
    """Polls until a call passes (a refused call charges nothing)."""
    deadline = time.monotonic() + seconds
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        if try_call(c) is None:
            return tries
        time.sleep(0.05)
    return None


def inflight(bases, key, stub):
    cs = clients(bases, key)
    run = str(time.time_ns())
    a, a_it = open_stream(cs[0], f"a{run}")
    b, b_it = open_stream(cs[1 % len(cs)], f"b{run}")
    third = try_call(cs[2 % len(cs)])
    # One stream ends: its lease comes back, a new call passes.
    release(stub, f"a{run}")
    for _ in a_it:
        pass
    after_end = passes_within(cs[0], WAIT_S)
    # A client that goes away mid-stream frees its lease.
    d, _ = open_stream(cs[1 % len(cs)], f"d{run}")
    while_held = try_call(cs[2 % len(cs)])
    d.close()
    after_disconnect = passes_within(cs[0], WAIT_S)
    release(stub, f"d{run}")
    release(stub, f"b{run}")
    for _ in b_it:
        pass
    return {
        "third": third,
        "after_end_tries": after_end,
        "while_held": while_held,
        "after_disconnect_tries": after_disconnect,
    }


def leak(bases, key, stub, n, seed):
    """n calls from 8 threads: a third disconnect mid-stream (under the key
    KEY-d, whose usage is what was streamed), a sixth fail upstream, the
    rest complete (streamed or not)."""
    cs = clients(bases, key)
    cut = clients(bases, key + "-d")
    rng = random.Random(seed)
    plan = [rng.random() for _ in range(n)]
    counts = {"ok": 0, "disconnected": 0, "failed": 0, "refused": 0}
    lock = threading.Lock()

    def one(i):
        c = cs[i % len(cs)]
        r = plan[i]
        try:
            if r < 1 / 3:
                s = cut[i % len(cut)].chat.completions.create(
                    model="gpt-4o", messages=messages(), max_tokens=100, stream=True,
                    extra_headers={**USAGE, "x-stub-chunks": "50"},
                )
                it = iter(s)
                next(it)
                s.close()
                what = "disconnected"
            elif r < 1 / 2:
                try:
                    chat(c, "error-500", USAGE).parse()
                    what = "ok"
                except openai.InternalServerError:
                    what = "failed"
            elif r < 3 / 4:
                for _ in c.chat.completions.create(
                    model="gpt-4o", messages=messages(), max_tokens=100, stream=True,
                    extra_headers=USAGE,
                ):
                    pass
                what = "ok"
            else:
                chat(c, "gpt-4o", USAGE).parse()
                what = "ok"
        except openai.RateLimitError:
            what = "refused"
        with lock:
            counts[what] += 1

    def worker(t):
        for i in range(t, n, 8):
            one(i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "until-limited":
        cached = args[4] if len(args) > 4 else None
        out = until_limited(args[0], args[1], args[2], int(args[3]), cached)
    elif cmd == "calls":
        out = calls(args[0], args[1], args[2], int(args[3]), args[4] if len(args) > 4 else None)
    elif cmd == "inflight":
        out = inflight(args[0], args[1], args[2])
    elif cmd == "leak":
        out = leak(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
