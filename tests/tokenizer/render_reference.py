#!/usr/bin/env python3
"""Reference renderer for tests/tokenizer/chat_template_test.cc.

Renders one chat template for several conversations with Python jinja2, configured the way
Hugging Face transformers' apply_chat_template configures it (ImmutableSandboxedEnvironment
with trim_blocks, lstrip_blocks and loop controls; a tojson filter that calls json.dumps;
raise_exception and strftime_now globals), so the C++ renderer can be compared byte for byte.

Usage: render_reference.py INPUT.json OUTPUT.json

INPUT: {"template_path": str, "bos_token": str, "eos_token": str,
        "now": "YYYY-MM-DDTHH:MM:SS" (what strftime_now formats),
        "cases": [{"messages": [...], "add_generation_prompt": bool,
                   "tools": [...] or null, "extra_context": {...}}]}
OUTPUT: {"results": [{"ok": true, "output": str}
                     | {"ok": false, "raised": bool, "error": str}]}
        "raised" is true when the template called raise_exception; "error" is then exactly
        its message.

Exit status: 0 on success, 3 when jinja2 is not installed, 2 on bad input.
"""
import datetime
import json
import sys

try:
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
except ImportError:
    print("jinja2 is not installed (apt install python3-jinja2)", file=sys.stderr)
    sys.exit(3)


class RaisedException(jinja2.exceptions.TemplateError):
    """What raise_exception() raises (transformers raises a plain TemplateError)."""


def make_environment(now):
    def raise_exception(message):
        raise RaisedException(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return now.strftime(format)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_case(template, spec, case):
    context = {
        "messages": case["messages"],
        "add_generation_prompt": case.get("add_generation_prompt", False),
        "bos_token": spec.get("bos_token", ""),
        "eos_token": spec.get("eos_token", ""),
    }
    if case.get("tools") is not None:
        context["tools"] = case["tools"]
    context.update(case.get("extra_context") or {})
    try:
        return {"ok": True, "output": template.render(**context)}
    except RaisedException as e:
        return {"ok": False, "raised": True, "error": str(e)}
    except Exception as e:  # any other jinja2 or Python error: the template rejects the input
        return {"ok": False, "raised": False, "error": f"{type(e).__name__}: {e}"}


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    now = datetime.datetime.strptime(spec.get("now", "2025-02-20T12:00:00"), "%Y-%m-%dT%H:%M:%S")
    with open(spec["template_path"], encoding="utf-8") as f:
        source = f.read()
    env = make_environment(now)
    try:
        template = env.from_string(source)
        results = [render_case(template, spec, case) for case in spec["cases"]]
    except Exception as e:  # the template itself does not compile
        error = {"ok": False, "raised": False, "error": f"{type(e).__name__}: {e}"}
        results = [error for _ in spec["cases"]]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
