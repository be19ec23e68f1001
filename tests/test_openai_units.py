"""pagedllm_openai's pure parts, without a server: the chat template against transformers,
Triton's error messages mapped to OpenAI errors, request validation, logprobs shapes, limits."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from pagedllm_openai.chat_template import ChatTemplate  # noqa: E402
from pagedllm_openai.errors import OpenAIError, from_triton  # noqa: E402
from pagedllm_openai.limits import ClientLimiter  # noqa: E402
from pagedllm_openai.logprobs import chat_logprobs, completion_logprobs  # noqa: E402
from pagedllm_openai.schemas import ChatCompletionRequest, CompletionRequest  # noqa: E402
from pagedllm_openai.service import loc_param, validation_error  # noqa: E402
from pagedllm_openai.tokenizer import ModelTokenizer  # noqa: E402
from pagedllm_openai.replies import Reply  # noqa: E402
from pagedllm_tools import ROOT  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "default"

CHATS = [
    [{"role": "user", "content": "def fib(n):"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Écris fib 🎉"},
     {"role": "assistant", "content": "東京タワー"}, {"role": "user", "content": "again"}],
    [{"role": "user", "content": "  spaces\n\n and lines  "}],
]


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_default_model_template_renders_as_transformers(messages, add_generation_prompt):
    from transformers import AutoTokenizer
    expected = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    template = ChatTemplate.from_model_dir(DEFAULT_MODEL, ModelTokenizer(DEFAULT_MODEL))
    assert template.render(messages, add_generation_prompt) == expected


def _bos_model(tmp_path, template: str):
    """A tiny checkpoint whose tokenizer adds a BOS itself (Llama's post-processor)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, "hi": 3, "there": 4, "|": 5, "user": 6,
             "assistant": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 0)])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "[UNK]", "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_a_rendered_bos_is_not_doubled_when_the_tokenizer_adds_one(tmp_path):
    from transformers import AutoTokenizer
    template = ("{{ bos_token }}{% for m in messages %}| {{ m['role'] }} | {{ m['content'] }} "
                "{{ eos_token }} {% endfor %}{% if add_generation_prompt %}| assistant |"
                "{% endif %}")
    model = _bos_model(tmp_path, template)
    messages = [{"role": "user", "content": "hi there"}]
    hf = AutoTokenizer.from_pretrained(str(model))
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    hf_ids = list(out["input_ids"] if not isinstance(out, list) else out)
    ours = ModelTokenizer(model)
    assert ours.adds_bos()
    text = ChatTemplate.from_model_dir(model, ours).render(messages)
    assert not text.startswith("<s>")
    # What Triton's ensemble does with the text: encode it with the tokenizer's own BOS.
    assert ours.encode(text) == hf_ids and hf_ids.count(0) == 1


def test_template_globals_filters_and_errors():
    template = ChatTemplate(
        "{% if messages|length > 2 %}{{ raise_exception('at most two messages') }}{% endif %}"
        "{% for m in messages %}{% if loop.index > 5 %}{% break %}{% endif %}"
        "{{ m | tojson }}{% generation %}!{% endgeneration %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}", {"eos_token": "</s>"})
    text = template.render([{"role": "user", "content": "<b>é</b>"}])
    assert text == '{"role": "user", "content": "<b>é</b>"}!4'  # no HTML escaping, no \\u
    with pytest.raises(OpenAIError) as e:
        template.render([{"role": "user", "content": "x"}] * 3)
    assert e.value.status == 400 and e.value.param == "messages"
    assert "at most two messages" in e.value.message
    with pytest.raises(OpenAIError) as e:  # the sandbox: template variables are immutable
        ChatTemplate("{{ messages.append(1) }}", {}).render([])
    assert e.value.status == 400 and e.value.param == "messages"
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}", {})


@pytest.mark.parametrize("message, status, param", [
    ("in ensemble 'ensemble', max_tokens is 5000, but the prompt has 1 tokens and max_model_len "
     "is 1024: at most 1023 tokens can follow it", 400, "max_tokens"),
    ("in ensemble 'ensemble', input 'sampling_parameters': n must be in [1, 64], got 0", 400,
     "n"),
    ("input 'sampling_parameters': logprobs must be in [0, 20], got 30", 400, "top_logprobs"),
    ("in ensemble 'ensemble', the prompt is empty (input 'input_ids' has no tokens; empty "
     "text_input?)", 400, "messages"),
    ("input 'input_ids': token id 70000 is outside the vocabulary [0, 4096)", 400, "messages"),
    ("prompt has 2000 tokens, but max_model_len is 1024 (prompt + at least one output token "
     "must fit)", 400, "messages"),
    ("in ensemble 'ensemble', overloaded: 256 sequences are waiting (max_queue_len 256); retry "
     "later", 429, None),
    ("server shutting down", 503, None),
    ("the engine process is gone (EOFError)", 503, None),
    ("Request for unknown model: 'ensemble' is not found", 503, None),
    ("engine step failed: boom", 500, None),
])
def test_triton_messages_map_to_openai_errors(message, status, param):
    error = from_triton(message, "messages", {"logprobs": "top_logprobs"})
    assert (error.status, error.param) == (status, param)
    assert not error.message.startswith("in ensemble")
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 65}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.[0].content"),
])
def test_chat_request_validation_names_the_field(body, param):
    from pydantic import ValidationError
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(body)
    error = validation_error(e.value)
    assert error.status == 400 and error.param is not None and error.param.startswith(param)


def test_completion_request_prompt_forms():
    assert CompletionRequest(prompt="hi").prompts() == ["hi"]
    assert CompletionRequest(prompt=["hi"]).prompts() == ["hi"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=[[1, 2]]).prompts() == [[1, 2]]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt="hi").max_tokens == 16  # OpenAI's and vLLM's default
    for bad in ("", [], ["a", ""], [-1], [[1], [-1]]):
        with pytest.raises(ValueError):
            CompletionRequest(prompt=bad)
    sampling = CompletionRequest(prompt="x", temperature=0, stop="\n", seed=3, ignore_eos=True,
                                 min_tokens=2).sampling(16, 2)
    assert sampling == {"n": 1, "max_tokens": 16, "temperature": 0, "stop": "\n", "seed": 3,
                        "ignore_eos": True, "min_tokens": 2, "logprobs": 2}
    assert loc_param(("body", "messages", 0, "content")) == "messages.[0].content"


def _token(*entries):
    """One token's Triton logprobs entry: (id, logprob, rank, text), the sampled one first."""
    return {str(i): {"logprob": lp, "rank": rank, "decoded_token": text}
            for i, lp, rank, text in entries}


def test_logprobs_shapes():
    tokens = [_token((5, -1.5, 2, " b"), (4, -0.5, 1, " a")),       # sampled: rank 2
              _token((7, -0.1, 1, "é"), (8, -float("inf"), 2, "x"))]
    lp = completion_logprobs(tokens, text_offset=3)
    assert lp.tokens == [" b", "é"] and lp.token_logprobs == [-1.5, -0.1]
    assert lp.text_offset == [3, 5]
    assert lp.top_logprobs[0] == {" a": -0.5, " b": -1.5}
    assert lp.top_logprobs[1]["x"] == -9999.0  # vLLM's floor: JSON has no -inf
    chat = chat_logprobs(tokens, top_logprobs=1)
    assert [c.token for c in chat.content] == [" b", "é"]
    assert chat.content[1].bytes == list("é".encode())
    assert [t.token for t in chat.content[0].top_logprobs] == [" a"]


def test_client_limiter_counts_per_client():
    limiter = ClientLimiter(2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(OpenAIError) as e:
        limiter.acquire("a")
    assert e.value.status == 429
    limiter.acquire("b")
    limiter.release("a")
    limiter.acquire("a")
    assert limiter.in_flight() == 3


def test_replies_that_queued_up_merge_into_one():
    """A lagging front door sends two replies as one: per completion, texts and logprobs join,
    token counts add, and a completion that ended in the first keeps its finish reason."""
    first = Reply(texts=["de", "x"], finish_reasons=[None, "stop"], num_output_tokens=[1, 1],
                  logprobs=[[{"1": {"logprob": -0.5}}], None], num_input_tokens=4,
                  cancel_token="secret")
    later = Reply(texts=["f fib", ""], finish_reasons=["length", None], num_output_tokens=[2, 0],
                  logprobs=[[{"2": {"logprob": -0.1}}, {"3": {"logprob": -0.2}}], None],
                  num_input_tokens=4, cancel_token="secret")
    merged = first.merged(later)
    assert merged.texts == ["def fib", "x"]
    assert merged.finish_reasons == ["length", "stop"] and merged.finished
    assert merged.num_output_tokens == [3, 1]
    assert [list(e) for e in merged.logprobs[0]] == [["1"], ["2"], ["3"]]
    assert merged.logprobs[1] is None
    assert (merged.num_input_tokens, merged.cancel_token) == (4, "secret")


def test_an_event_stays_one_line_for_splitlines_readers():
    """U+0085, U+2028 and U+2029 in generated text go out escaped: a reader that splits the
    stream with str.splitlines() (httpx's aiter_lines) still gets the whole JSON, unchanged."""
    from pagedllm_openai.sse import event

    text = "a\u2028b\x85c\u2029d\n"
    lines = event({"choices": [{"text": text}]}).splitlines()
    assert lines[1:] == [""]
    assert json.loads(lines[0][len("data: "):])["choices"][0]["text"] == text


@pytest.mark.parametrize("texts, finish, logprobs", [
    ([" fib"], [None], None),
    (["", "é漢\n"], ["length", None], None),
    ([" a", " b"], [None, "stop"],
     [[{"5": {"logprob": -0.5, "rank": 1, "decoded_token": " a"}}], None]),
])
def test_the_raw_contents_reader_equals_tritonclients_reader(texts, finish, logprobs):
    """parse_reply reads outputs straight from the raw contents (the front door's hottest
    function); it must read what tritonclient's as_numpy reads, for any n, text and logprobs."""
    from pagedllm_openai.replies import parse_reply, parse_reply_generic
    from triton_replies import ensemble_response

    result = ensemble_response(texts, finish, logprobs, num_input_tokens=70000)
    reply = parse_reply(result)
    assert reply == parse_reply_generic(result, None)
    assert reply.texts == texts and reply.finish_reasons == finish
    assert reply.num_input_tokens == 70000 and reply.num_output_tokens == [1] * len(texts)
