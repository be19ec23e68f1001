"""Each new family's chat format, read from the checkpoint, renders as transformers renders it.

The OpenAI service renders the checkpoint's own template (openai_server/chat_template.py). The
templates below are written here in each family's format, with the Jinja their checkpoints'
templates lean on (they are not those files verbatim): Gemma's `model` role, `trim` and
alternation check that raises; Gemma 3's system text folded into the first user turn; Phi-3's
`<|role|>` / `<|end|>` turns; Mistral's `[INST]` turns with the system text on the last user
message (`namespace`, `loop.last`); Qwen3's `<|im_start|>` turns, reasoning split off with string
methods and `enable_thinking` from chat_template_kwargs. Each is put in a model directory with
the default model's tokenizer, read back by the service's ChatTemplate and by transformers'
AutoTokenizer, and the two renders compared.
"""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("jinja2")

from pagedllm_openai.chat_template import ChatTemplate  # noqa: E402
from pagedllm_openai.errors import OpenAIError  # noqa: E402
from pagedllm_openai.tokenizer import ModelTokenizer  # noqa: E402
from pagedllm_tools import ROOT  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "default"

GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ raise_exception('the system role is not supported') }}{% endif %}"
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != loop.index0 is even %}"
    "{{ raise_exception('roles must alternate user / assistant') }}{% endif %}"
    "{% set speaker = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ speaker }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3 = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] ~ '\n\n' if messages[0]['role'] == 'system' else '' %}"
    "{% set turns = messages[1:] if system else messages %}"
    "{% for m in turns %}"
    "{% set speaker = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{% set text = m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join %}"
    "<start_of_turn>{{ speaker }}\n{{ (system if loop.first else '') ~ text | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3 = (
    "{% for m in messages %}"
    "{% if m['role'] in ['system', 'user', 'assistant'] %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL = (
    "{%- set ns = namespace(system='', turns=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}"
    "{%- else -%}{%- set ns.turns = ns.turns + [m] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}"
    "{%- for m in ns.turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('after the system message, roles must alternate user/assistant') }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.last and ns.system -%}[INST] {{ ns.system }}\n\n{{ m['content'] }}[/INST]"
    "{%- else -%}[INST] {{ m['content'] }}[/INST]{%- endif -%}"
    "{%- else -%}{{ ' ' + m['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages[::-1] %}{%- if m.role == 'user' and ns.last_user < 0 %}"
    "{%- set ns.last_user = messages | length - 1 - loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{ '<|im_start|>user\n' + m.content + '<|im_end|>\n' }}"
    "{%- elif m.role == 'assistant' %}"
    "{%- set answer = m.content.split('</think>')[-1].lstrip('\n') if '</think>' in m.content else m.content %}"
    "{%- set thought = m.content.split('</think>')[0].split('<think>')[-1].strip('\n') "
    "if '</think>' in m.content else '' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- if loop.index0 > ns.last_user and thought %}{{ '<think>\n' + thought + '\n</think>\n\n' }}{% endif %}"
    "{{ answer + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{%- endif %}"
)
FAMILIES = {
    "gemma": (GEMMA, "<bos>", "<eos>"),
    "gemma3": (GEMMA3, "<bos>", "<eos>"),
    "phi3": (PHI3, "<s>", "<|endoftext|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
    "qwen3": (QWEN3, None, "<|im_end|>"),
}
CHATS = [
    [{"role": "user", "content": "  Écris fib 🎉 \n"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "東京タワー"},
     {"role": "user", "content": "again"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "<think>\nshort\n</think>\n\nhello"}, {"role": "user", "content": "more"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nkept\n</think>\n\nyes"}],
]


def model_dir(tmp_path, family: str, jinja_file: bool = False):
    """A directory with the default tokenizer and `family`'s template in tokenizer_config.json
    (or in chat_template.jinja)."""
    template, bos, eos = FAMILIES[family]
    shutil.copy(DEFAULT_MODEL / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "add_bos_token": False, "clean_up_tokenization_spaces": False}
    if jinja_file:
        (tmp_path / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def render_both(path, messages, add_generation_prompt=True, **kwargs):
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(path)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
    template = ChatTemplate.from_model_dir(path, ModelTokenizer(path))
    return template.render(messages, add_generation_prompt, kwargs), expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_family_template_renders_as_transformers(tmp_path, family, chat, add_generation_prompt):
    messages = CHATS[chat]
    if family == "gemma" and messages[0]["role"] == "system":
        pytest.skip("Gemma's format refuses a system message (test_template_refusals_are_400s)")
    ours, expected = render_both(model_dir(tmp_path, family), messages, add_generation_prompt)
    assert ours == expected


def test_chat_template_jinja_file_and_template_kwargs(tmp_path):
    path = model_dir(tmp_path, "qwen3", jinja_file=True)
    for thinking in (True, False):
        ours, expected = render_both(path, CHATS[2], enable_thinking=thinking)
        assert ours == expected
    assert ours.endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("family, messages", [
    ("gemma", [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]),
    ("gemma", [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]),
    ("mistral", [{"role": "assistant", "content": "x"}]),
])
def test_template_refusals_are_400s(tmp_path, family, messages):
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    path = model_dir(tmp_path, family)
    with pytest.raises(TemplateError):
        AutoTokenizer.from_pretrained(str(path)).apply_chat_template(messages, tokenize=False)
    with pytest.raises(OpenAIError) as e:
        ChatTemplate.from_model_dir(path, ModelTokenizer(path)).render(messages)
    assert e.value.status == 400 and e.value.param == "messages"
