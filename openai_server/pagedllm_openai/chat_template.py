"""Chat messages -> the prompt text, rendered as transformers.apply_chat_template renders it.

The template is the checkpoint's own: `chat_template.jinja` in the model directory, else the
`chat_template` key of tokenizer_config.json (a string, or a list of named templates of which
"default" is taken). The Jinja environment is transformers' (chat_template_utils.py):
ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks, loopcontrols), `raise_exception` and
`strftime_now` globals, a `tojson` filter that does not escape HTML or non-ASCII, and a
`{% generation %}` block that renders its body unchanged. The variables are transformers' too:
`messages`, `add_generation_prompt`, `tools` (the request's, as OpenAI sends them, or None),
`documents` (None) and the special tokens that are set (bos_token, eos_token, ...), then the request's `chat_template_kwargs`.

A template that raises (its `raise_exception`, or any error on these messages) is the request's
fault: a 400 naming `messages`.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pagedllm_openai.errors import bad_request
from pagedllm_openai.tokenizer import ModelTokenizer


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it (to
    build masks); rendering only needs the body as it is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None,
            sort_keys: bool = False) -> str:
    # NOTE: replaces Jinja's own tojson, which escapes <, >, & and ' for HTML: templates are
    # written against transformers' filter, and an escaped prompt is another prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def template_source(model_dir: Path, tokenizer_config: dict) -> str | None:
    """The checkpoint's chat template text, or None when it has none."""
    jinja_file = Path(model_dir) / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


class ChatTemplate:
    """One compiled chat template and the variables it renders with.

    Args:
        source: the Jinja template text.
        special_tokens: bos_token, eos_token, ... (only those that are set).
        strip_bos: the BOS text to strip from the front of a render (see `render`), or None.

    Raises:
        ValueError: the template does not compile.
    """

    def __init__(self, source: str, special_tokens: dict, strip_bos: str | None = None):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_GenerationBlock,
                                                        jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"the chat template does not compile: {e} (line {e.lineno})") \
                from None
        self.special_tokens = dict(special_tokens)
        self.strip_bos = strip_bos
        self.source = source

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, tokenizer: ModelTokenizer) -> ChatTemplate | None:
        """The model directory's template, or None when the checkpoint has none."""
        source = template_source(Path(model_dir), tokenizer.config)
        if source is None:
            return None
        special = tokenizer.special_tokens()
        strip = special.get("bos_token") if tokenizer.adds_bos() else None
        return cls(source, special, strip)

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               extra: dict | None = None, tools: list[dict] | None = None) -> str:
        """The prompt text for `messages`.

        When the tokenizer adds a BOS itself (Llama's post-processor) and the template also
        writes the BOS text first (most Llama templates start with `{{ bos_token }}`), the
        leading BOS text is dropped here. Why: transformers tokenizes a rendered chat with
        add_special_tokens=False, so its ids hold that one BOS; Triton's ensemble tokenizes the
        text as a plain prompt, adding the tokenizer's BOS, and would otherwise hold two. With
        the text's BOS dropped, the ensemble's ids equal transformers' ids.

        Raises:
            OpenAIError: 400 naming `messages`, when the template raises on these messages.
        """
        reserved = ("messages", "add_generation_prompt", "tools", "documents")
        variables = {**self.special_tokens,
                     **{k: v for k, v in (extra or {}).items() if k not in reserved}}
        try:
            text = self._template.render(messages=messages, tools=tools, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **variables)
        except jinja2.TemplateError as e:
            raise bad_request(f"the chat template refused these messages: {e}", "messages") \
                from None
        except Exception as e:  # noqa: BLE001 - any failure inside the template is the input's
            raise bad_request(f"the chat template failed on these messages "
                              f"({type(e).__name__}: {e})", "messages") from None
        if self.strip_bos and text.startswith(self.strip_bos):
            text = text[len(self.strip_bos):]
        return text
