"""POST /v1/chat/completions: messages -> the checkpoint's chat template -> the ensemble.

Shapes follow vLLM's serving_chat.py: non-streamed, one choice per completion with an assistant
message; streamed, first a chunk per choice with delta {"role": "assistant", "content": ""},
then chunks with delta {"content": ...} or {"tool_calls": [...]} (the last with its
finish_reason), then a usage chunk (choices []) only when stream_options.include_usage, then
`data: [DONE]`. Chunks are written with exclude_unset, as vLLM writes them: no "usage" key on
ordinary chunks (genai-perf reads the first choice of every chunk and would fail on a usage
chunk it did not ask for).

`response_format` / `structured_outputs` constrain the output (response_format.py); `tools`
reach the chat template, and `tool_choice` decides what the output becomes (tools.py,
tool_answers.py).
"""
from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pagedllm_openai import tools
from pagedllm_openai.errors import bad_request
from pagedllm_openai.generation_run import Run, stream_error
from pagedllm_openai.limits import check_prompt_chars
from pagedllm_openai.logprobs import chat_logprobs
from pagedllm_openai.replies import Reply
from pagedllm_openai.request_id import request_id
from pagedllm_openai.response_format import structured_outputs
from pagedllm_openai.request_limits import check_prompt_tokens, check_sampling_limits
from pagedllm_openai.schemas import (AssistantMessage, ChatChoice, ChatChunkChoice,
                                     ChatCompletionChunk, ChatCompletionRequest,
                                     ChatCompletionResponse, DeltaMessage, Usage, new_id)
from pagedllm_openai.service import Service, parse_request
from pagedllm_openai.sse import DONE, event
from pagedllm_openai.tool_answers import ChoiceAnswer


def render_prompt(service: Service, req: ChatCompletionRequest) -> str:
    """The prompt text for the request's messages (400 naming `messages` when it cannot be)."""
    limit = service.config.max_prompt_chars
    check_prompt_chars(sum(len(m.text()) for m in req.messages), limit, "messages")
    if service.template is None:
        raise bad_request("this model has no chat template (its tokenizer_config.json has no "
                          "chat_template and there is no chat_template.jinja); use "
                          "/v1/completions with a prompt", "messages")
    messages = tools.messages_for_template([m.for_template() for m in req.messages])
    tool_list = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    prompt = service.template.render(messages, req.add_generation_prompt,
                                     req.chat_template_kwargs, tools=tool_list)
    check_prompt_chars(len(prompt), limit, "messages")
    if not prompt:
        raise bad_request("the chat template rendered these messages as an empty prompt",
                          "messages")
    return prompt


def _constraint(req: ChatCompletionRequest, mode: str | None) -> tuple[dict | None, dict]:
    """The request's structured_outputs (response_format, structured_outputs or tool_choice)."""
    so, renames = structured_outputs(req.response_format, req.structured_outputs)
    if mode in ("required", "named"):
        if so is not None:
            raise bad_request("a required or named tool_choice cannot be combined with "
                              "response_format or structured_outputs", "tool_choice")
        so, renames = tools.constraint(req.tools, req.tool_choice, req.parallel_tool_calls)
    return so, renames


async def create_chat_completion(service: Service, request: Request) -> Response:
    req: ChatCompletionRequest = await parse_request(request, ChatCompletionRequest,
                                                     service.config.max_body_bytes)
    service.check_model(req.model)
    check_sampling_limits(service.config, req.n, req.stop, req.top_logprobs, "top_logprobs")
    mode = tools.mode(req.tools, req.tool_choice)
    so, renames = _constraint(req, mode)
    prompt = render_prompt(service, req)
    check_prompt_tokens(service.config, service.tokenizer, prompt, "messages")
    top = (req.top_logprobs or 0) if req.logprobs else None
    renames = {"logprobs": "top_logprobs", **renames}
    if req.max_completion_tokens is not None:
        renames["max_tokens"] = "max_completion_tokens"
    function = req.tool_choice.function.name if mode == "named" else None
    answers = [ChoiceAnswer(mode, service.tool_parser, function, req.parallel_tool_calls)
               for _ in range(req.n)]
    run = Run(service, request, "chat", "messages", renames).start(
        prompt, req.sampling(req.max_new_tokens(), top, so), request_id(request))
    model = service.config.served_model_name
    if not req.stream:
        collected = await run.collect(req.n)
        if isinstance(collected, Response):
            return collected
        choices = []
        for i in range(req.n):
            content, calls, finish = answers[i].whole(collected.texts[i],
                                                      collected.finish_reasons[i])
            choices.append(ChatChoice(
                index=i, message=AssistantMessage(content=content, tool_calls=calls),
                logprobs=chat_logprobs(collected.logprobs[i], top) if top is not None else None,
                finish_reason=finish))
        usage = Usage(prompt_tokens=collected.prompt_tokens,
                      completion_tokens=collected.completion_tokens,
                      total_tokens=collected.prompt_tokens + collected.completion_tokens)
        body = ChatCompletionResponse(model=model, choices=choices, usage=usage)
        return JSONResponse(body.model_dump())
    first = await run.first()
    if isinstance(first, Response):
        return first
    return run.stream(_events(run, req, first, top, answers))


async def _events(run: Run, req: ChatCompletionRequest, first: Reply, top: int | None,
                  answers: list[ChoiceAnswer]):
    """The SSE events of one streamed chat request."""
    model = run.service.config.served_model_name
    chunk_id, created = new_id("chatcmpl"), int(time.time())

    def chunk(choice: ChatChunkChoice) -> str:
        body = ChatCompletionChunk(id=chunk_id, object="chat.completion.chunk", created=created,
                                   model=model, choices=[choice])
        return event(body.model_dump_json(exclude_unset=True))

    prompt_tokens = completion_tokens = 0
    try:
        for i in range(req.n):
            yield chunk(ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""),
                                        logprobs=None, finish_reason=None))
        reply: Reply | None = first
        while reply is not None:
            prompt_tokens = reply.num_input_tokens
            completion_tokens += sum(reply.num_output_tokens)
            for i, text in enumerate(reply.texts):
                tokens = reply.logprobs[i] or []
                finish = reply.finish_reasons[i]
                if not text and finish is None and not tokens:
                    continue
                content, calls = answers[i].feed(text)
                if finish is not None:
                    tail, more, finish = answers[i].end(finish)
                    content, calls = content + tail, calls + more
                if not content and not calls and finish is None and not tokens:
                    continue
                delta = DeltaMessage(content=content, tool_calls=calls) if calls \
                    else DeltaMessage(content=content)
                logprobs = chat_logprobs(tokens, top) if top is not None else None
                yield chunk(ChatChunkChoice(index=i, delta=delta, logprobs=logprobs,
                                            finish_reason=finish))
            reply = await run.next_reply()
        if req.include_usage():
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)
            body = ChatCompletionChunk(id=chunk_id, object="chat.completion.chunk",
                                       created=created, model=model, choices=[], usage=usage)
            yield event(body.model_dump_json(exclude_unset=True))
    except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
        yield event(stream_error(e))
    yield DONE
