"""pagedllm_openai: the OpenAI-compatible HTTP front door of a pagedllm tritonserver.

It talks to Triton only (gRPC streaming for generation, HTTP for the proxied /v2 API and the
metrics), never to the engine: the engine and Triton can be restarted or moved under it. The
files, one job each:

    config.py          the settings (a dataclass)
    schemas.py         the OpenAI request and response objects (pydantic)
    errors.py          the OpenAI error envelope, and Triton's errors mapped onto it
    chat_template.py   messages -> prompt text, as transformers.apply_chat_template renders it
    tokenizer.py       the model directory's tokenizer.json (token-id prompts, BOS rules)
    triton_client.py   one generation = one gRPC stream; cancelled all the way down
    replies.py         Triton's streamed responses -> Replies (read from their raw contents)
    limits.py          body size, prompt length and per-client concurrency limits
    request_limits.py  what one request may ask for: stop strings, n, logprobs, prompt tokens
    api_keys.py        API keys: 401 without a valid one; who a client is, for the limits
    json_body.py       a request body -> one JSON object, or a 400 (deep nesting, bad UTF-8)
    service.py         what every handler needs (Service), request parsing, collecting replies
    generation_run.py  one request's run: slot, stream, disconnects, cleanup (both endpoints)
    completions.py     /v1/completions: request -> Triton, responses -> OpenAI objects
    chat.py            /v1/chat/completions, the same for chat
    response_format.py response_format / structured_outputs -> the engine's constraint
    tools.py           tools and tool_choice: modes, the grammars of required / named choices
    tool_parsers.py    the model's tool-call syntax (hermes, llama3_json), whole or streamed
    tool_answers.py    what one chat choice's text becomes: content, tool calls or both
    tokenize.py        /tokenize, /detokenize, /version (vLLM's)
    request_id.py      X-Request-Id: echoed, and the request's id downstream
    logprobs.py        Triton's logprobs JSON -> OpenAI's two logprobs shapes
    sse.py             server-sent events that cancel their generation when the client goes
    proxy.py           /v2/...: Triton's own HTTP API, behind the body-size guard
    data_plane.py      which /v2 routes the proxy forwards (not the control plane: 403)
    generate_inputs.py a /v2 generate body checked against the model's declared inputs
    health.py          /v1/health/live, /v1/health/ready (a real tiny generation), /v1/metrics
    metrics.py         the service's own Prometheus counters
    vllm_routes.py     vLLM's /health and /metrics on the same port
    app.py             the FastAPI app: routes, exception handlers, lifespan
    server.py          `pagedllm-openai`: argparse + uvicorn on one or two sockets, N workers
"""
