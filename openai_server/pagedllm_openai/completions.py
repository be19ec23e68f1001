"""POST /v1/completions: prompts (texts or token ids) -> n completions each, whole or streamed.

Text prompts go through Triton's ensemble; token-id prompts straight to its `llm` model. Several
prompts run as one generation each, side by side in the engine; prompt p's completion i is choice
p * n + i (OpenAI's numbering). Shapes follow vLLM's serving_completion.py: non-streamed, one
choice per completion with its text (after the prompt when `echo`) and logprobs; streamed, one
chunk per completion and reply carrying that completion's new text (its first chunk led by the
prompt when `echo`), the last one its finish_reason, then a usage chunk (choices []) only when
stream_options.include_usage, then `data: [DONE]`. With several prompts a stream carries the
prompts one after the other (each generated meanwhile).
"""
from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pagedllm_openai.generation_run import Run, stream_all, stream_error
from pagedllm_openai.limits import check_prompt_chars
from pagedllm_openai.logprobs import completion_logprobs
from pagedllm_openai.replies import Reply
from pagedllm_openai.request_id import request_id
from pagedllm_openai.response_format import structured_outputs
from pagedllm_openai.request_limits import check_prompt_tokens, check_sampling_limits
from pagedllm_openai.schemas import (CompletionChoice, CompletionRequest, CompletionResponse,
                                     Usage, new_id)
from pagedllm_openai.service import Service, parse_request
from pagedllm_openai.sse import DONE, event


async def create_completion(service: Service, request: Request) -> Response:
    req: CompletionRequest = await parse_request(request, CompletionRequest,
                                                 service.config.max_body_bytes)
    service.check_model(req.model)
    prompts = req.prompts()
    for prompt in prompts:
        check_prompt_chars(len(prompt), service.config.max_prompt_chars, "prompt")
    check_sampling_limits(service.config, req.n, req.stop, req.logprobs, "logprobs")
    for prompt in prompts:
        check_prompt_tokens(service.config, service.tokenizer, prompt, "prompt")
    so, renames = structured_outputs(req.response_format, req.structured_outputs)
    sampling = req.sampling(req.max_tokens, req.logprobs, so)
    echoes = [(p if isinstance(p, str) else service.tokenizer.decode(p)) if req.echo else ""
              for p in prompts]
    rid = request_id(request)
    runs: list[Run] = []
    try:
        for p, prompt in enumerate(prompts):
            own = rid if rid is None or len(prompts) == 1 else f"{rid}-{p}"
            runs.append(Run(service, request, "completions", "prompt", renames).start(
                prompt, sampling, own))
        if not req.stream:
            return await _whole(service, req, runs, echoes)
        firsts = []
        for run in runs:
            first = await run.first()
            if isinstance(first, Response):
                return first
            firsts.append(first)
    except BaseException:
        for run in runs:
            run.close()
        raise
    return stream_all(runs, _events(runs, req, firsts, echoes))


async def _whole(service: Service, req: CompletionRequest, runs: list[Run],
                 echoes: list[str]) -> Response:
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, run in enumerate(runs):
        collected = await run.collect(req.n)
        if isinstance(collected, Response):
            return collected
        for i in range(req.n):
            logprobs = None
            if req.logprobs is not None:
                logprobs = completion_logprobs(collected.logprobs[i], len(echoes[p]))
            choices.append(CompletionChoice(index=p * req.n + i,
                                            text=echoes[p] + collected.texts[i],
                                            logprobs=logprobs,
                                            finish_reason=collected.finish_reasons[i]))
        prompt_tokens += collected.prompt_tokens
        completion_tokens += collected.completion_tokens
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                  total_tokens=prompt_tokens + completion_tokens)
    body = CompletionResponse(model=service.config.served_model_name, choices=choices,
                              usage=usage)
    return JSONResponse(body.model_dump())


async def _events(runs: list[Run], req: CompletionRequest, firsts: list[Reply],
                  echoes: list[str]):
    """The SSE events of one streamed completion request (its prompts one after the other)."""
    model = runs[0].service.config.served_model_name
    chunk_id, created = new_id("cmpl"), int(time.time())
    prompt_tokens = completion_tokens = 0
    try:
        for p, (run, first) in enumerate(zip(runs, firsts)):
            sent = [0] * req.n            # characters each choice has sent
            echoed = [not req.echo] * req.n
            reply: Reply | None = first
            while reply is not None:
                if reply is first:
                    prompt_tokens += reply.num_input_tokens
                completion_tokens += sum(reply.num_output_tokens)
                for i, text in enumerate(reply.texts):
                    tokens = reply.logprobs[i] or []
                    if not text and reply.finish_reasons[i] is None and not tokens:
                        continue
                    lead = ""
                    if not echoed[i]:  # echo: the prompt leads the choice's first chunk
                        lead, echoed[i] = echoes[p], True
                        sent[i] += len(lead)
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = completion_logprobs(tokens, sent[i])
                    sent[i] += len(text)
                    choice = CompletionChoice(index=p * req.n + i, text=lead + text,
                                              logprobs=logprobs,
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
