"""The GGUF chat-template renderer: the default experts' own templates against the ChatML layout
their model cards document, written out by hand; and the sandbox a model file's template runs in."""

from __future__ import annotations

import jinja2
import pytest

from coserve.backends.chat_template import ChatTemplate
from coserve.backends.gguf_header import read_header
from coserve.backends.llama_memory import gguf_path
from coserve.config import load_library

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _template(expert: str) -> ChatTemplate:
    library = load_library()
    path = gguf_path(library.expert(expert), library.path.parent if library.path else None)
    source = read_header(path).metadata["tokenizer.chat_template"]
    return ChatTemplate(source, bos_token="", eos_token="<|im_end|>")


def _chatml(*turns: tuple[str, str]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("expert", "default_system"), [("general", SMOLLM_SYSTEM), ("coder", QWEN_SYSTEM), ("large", QWEN_SYSTEM)]
)
def test_the_default_experts_templates_render_chatml(expert: str, default_system: str) -> None:
    template = _template(expert)
    assert template.render([{"role": "user", "content": "Hi"}]) == _chatml(("system", default_system), ("user", "Hi"))
    conversation = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Rouge."},
        {"role": "user", "content": "Another, with an accent: é?"},
    ]
    assert template.render(conversation) == _chatml(*((m["role"], m["content"]) for m in conversation))
    without = template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert without == _chatml(("system", default_system), ("user", "Hi"))[: -len("<|im_start|>assistant\n")]


def test_a_templates_own_refusal_is_a_value_error() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('roles must be user or assistant') }}{% endif %}{{ m.content }}{% endfor %}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "ok"}]) == "ok"
    with pytest.raises(ValueError, match="refused the conversation: roles must be user or assistant"):
        template.render([{"role": "tool", "content": "x"}])


def test_special_tokens_whitespace_and_tojson_follow_hugging_faces_rendering() -> None:
    template = ChatTemplate(
        "{{ bos_token }}\n{% for m in messages %}\n  {{ m.content | tojson }}{{ eos_token }}\n{% endfor %}",
        bos_token="<s>",
        eos_token="</s>",
    )
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indent before one;
    # tojson keeps non-ASCII text as it is
    assert template.render([{"role": "user", "content": "café"}]) == '<s>\n  "café"</s>\n'


def test_a_template_cannot_change_what_it_is_given_or_reach_python_internals() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(jinja2.exceptions.SecurityError):
        ChatTemplate("{{ messages.append(1) }}", "", "").render(messages)
    assert messages == [{"role": "user", "content": "Hi"}]
    with pytest.raises(jinja2.exceptions.SecurityError):
        ChatTemplate("{{ messages.__class__.__base__.__subclasses__() }}", "", "").render(messages)
