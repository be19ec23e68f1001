"""POST /v1/completions: one prompt (text or token ids) -> n completions, whole or streamed.

Text prompts go through Triton's ensemble; token-id prompts straight to its `llm` model. Shapes
follow vLLM's serving_completion.py: non-streamed, one choice per completion with its text (after
the prompt when `echo`) and logprobs; streamed, one chunk per completion and reply carrying that
completion's new text (its first chunk led by the prompt when `echo`), the last one its
finish_reason, then a usage chunk (choices []) only when stream_options.include_usage, then
`data: [DONE]`.
"""
from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pagedllm_openai.generation_run import Run, stream_error
from pagedllm_openai.limits import check_prompt_chars
from pagedllm_openai.logprobs import completion_logprobs
from pagedllm_openai.request_limits import check_prompt_tokens, check_sampling_limits
from pagedllm_openai.schemas import (CompletionChoice, CompletionRequest, CompletionResponse,
                                     Usage, new_id)
from pagedllm_openai.service import Service, parse_request
from pagedllm_openai.sse import DONE, event
from pagedllm_openai.replies import Reply


async def create_completion(service: Service, request: Request) -> Response:
    req: CompletionRequest = await parse_request(request, CompletionRequest,
                                                 service.config.max_body_bytes)
    service.check_model(req.model)
    check_prompt_chars(len(req.prompt), service.config.max_prompt_chars, "prompt")
    check_sampling_limits(service.config, req.n, req.stop, req.logprobs, "logprobs")
    check_prompt_tokens(service.config, service.tokenizer, req.prompt, "prompt")
    prompt_text = ""
    if req.echo:
        prompt_text = req.prompt if isinstance(req.prompt, str) \
            else service.tokenizer.decode(req.prompt)
    run = Run(service, request, "completions", "prompt", {}).start(
        req.prompt, req.sampling(req.max_tokens, req.logprobs))
    model = service.config.served_model_name
    if not req.stream:
        collected = await run.collect(req.n)
        if isinstance(collected, Response):
            return collected
        choices = []
        for i in range(req.n):
            logprobs = None
            if req.logprobs is not None:
                logprobs = completion_logprobs(collected.logprobs[i], len(prompt_text))
            choices.append(CompletionChoice(index=i, text=prompt_text + collected.texts[i],
                                            logprobs=logprobs,
                                            finish_reason=collected.finish_reasons[i]))
        usage = Usage(prompt_tokens=collected.prompt_tokens,
                      completion_tokens=collected.completion_tokens,
                      total_tokens=collected.prompt_tokens + collected.completion_tokens)
        body = CompletionResponse(model=model, choices=choices, usage=usage)
        return JSONResponse(body.model_dump())
    first = await run.first()
    if isinstance(first, Response):
        return first
    return run.stream(_events(run, req, first, prompt_text))


async def _events(run: Run, req: CompletionRequest, first: Reply, prompt_text: str):
    """The SSE events of one streamed completion request."""
    model = run.service.config.served_model_name
    chunk_id, created = new_id("cmpl"), int(time.time())
    sent = [0] * req.n            # characters each choice has sent
    echoed = [not req.echo] * req.n
    prompt_tokens = completion_tokens = 0
    try:
        reply: Reply | None = first
        while reply is not None:
            prompt_tokens = reply.num_input_tokens
            completion_tokens += sum(reply.num_output_tokens)
            for i, text in enumerate(reply.texts):
                tokens = reply.logprobs[i] or []
                if not text and reply.finish_reasons[i] is None and not tokens:
                    continue
                lead = ""
                if not echoed[i]:  # echo: the prompt leads the choice's first chunk
                    lead, echoed[i] = prompt_text, True
                    sent[i] += len(prompt_text)
                logprobs = None
                if req.logprobs is not None:
                    logprobs = completion_logprobs(tokens, sent[i])
                sent[i] += len(text)
                choice = CompletionChoice(index=i, text=lead + text, logprobs=logprobs,
                                          finish_reason=reply.finish_reasons[i])
                chunk = CompletionResponse(id=chunk_id, created=created, model=model,
                                           choices=[choice])
                yield event(chunk.model_dump_json())
            reply = await run.next_reply()
        if req.include_usage():
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)
            chunk = CompletionResponse(id=chunk_id, created=created, model=model, choices=[],
                                       usage=usage)
            yield event(chunk.model_dump_json(exclude_none=True))
    except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
        yield event(stream_error(e))
    yield DONE
