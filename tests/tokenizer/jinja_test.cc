// Unit tests of the Jinja interpreter (tokenizer/jinja): each language feature, filter, test
// and method that chat templates use, with expected outputs checked against Python jinja2
// 3.1 configured as Hugging Face transformers configures it (sandboxed, trim_blocks,
// lstrip_blocks, loop controls, json.dumps tojson). kError marks inputs jinja2 rejects; the
// comment beside each says how.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/jinja/template.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {
namespace {

constexpr const char* kError = "\x01error";

// The variables every case sees (object members keep this order).
Globals context() {
  static const char* kContext = R"J({
    "d": {"b": 2, "a": 1, "items": "x", "name": "n"},
    "l": [3, 1, 2],
    "s": "Hello World",
    "n": null,
    "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "yo"}],
    "u": "héllo wörld",
    "f": 2.5,
    "t": true,
    "e": "",
    "el": []
  })J";
  Globals globals;
  const auto j = nlohmann::ordered_json::parse(kContext);
  for (auto it = j.begin(); it != j.end(); ++it) {
    auto v = from_json(it.value());
    EXPECT_TRUE(v.ok());
    globals.emplace_back(it.key(), *v);
  }
  globals.emplace_back("raise_exception",
                       make_function("raise_exception", [](Evaluator& ev, CallArgs& args) -> Result<Value> {
                         return ev.raise(args.positional.empty() ? "" : to_str(args.positional[0]));
                       }));
  return globals;
}

Result<std::string> render(const std::string& source, const Globals& globals, const RenderLimits& limits = {}) {
  ASSIGN_OR_RETURN(Template t, Template::parse(source, "chat template"));
  return t.render(globals, limits);
}

struct Case {
  const char* name;
  const char* source;
  const char* expected;  // kError: jinja2 fails too
};

const Case
    kCases
        [] =
            {
                {"int_float_print",
                 R"J({{ 1 }} {{ 1.0 }} {{ -2.50 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 0.1 + 0.2 }} {{ 1_000 }} {{ 0x1F }})J",
                 R"J(1 1.0 -2.5 1e+16 1000000000000000.0 0.0001 1e-05 0.30000000000000004 1000 31)J"},
                {"bool_none_print", R"J({{ true }} {{ False }} {{ none }} {{ None }} {{ n }} {{ t }})J",
                 R"J(True False None None None True)J"},
                {"string_escapes",
                 R"J({{ 'a\'b' }}|{{ "tab\there" }}|{{ 'nl\nx' }}|{{ '\u00e9\x41' }}|{{ 'back\\slash' }}|{{ 'a' 'b' }}|{{ '\d' }})J",
                 R"J(a'b|tab	here|nl
x|éA|back\slash|ab|\d)J"},
                {"list_repr", R"J({{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }})J",
                 R"J([1, 'a', None, True, 1.5, [2], {'k': 'v'}])J"},
                {"tuple_repr", R"J({{ (1, 2) }} {{ (1,) }} {{ () }} {{ 1, 2 }})J", R"J((1, 2) (1,) () (1, 2))J"},
                {"dict_repr_order", R"J({{ {'z': 1, 'a': [1, 'x'], 3: none} }} {{ d }})J",
                 R"J({'z': 1, 'a': [1, 'x'], 3: None} {'b': 2, 'a': 1, 'items': 'x', 'name': 'n'})J"},
                {"string_repr_quotes", R"J({{ ["it's", 'say "hi"', "both'\"", 'x\ny', 'é'] }})J",
                 R"J(["it's", 'say "hi"', 'both\'"', 'x\ny', 'é'])J"},
                {"undefined_prints_empty", R"J([{{ nothing }}][{{ d.missing }}][{{ l[10] }}])J", R"J([][][])J"},
                {"int_arith",
                 R"J({{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }})J",
                 R"J(10 -3 21 3.5 2.0 3 -4 1 2 -2 1024)J"},
                {"float_arith",
                 R"J({{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** -1 }} {{ 2.0 ** 3 }} {{ f * 2 }} {{ 1 + t }})J",
                 R"J(3.0 0.5 0.5 8.0 5.0 2)J"},
                {"pow_left_assoc_and_unary", R"J({{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ -(2 ** 2) }} {{ +3 }} {{ -f }})J",
                 R"J(64 4 -4 3 -2.5)J"},
                {"string_list_ops",
                 R"J({{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 3 }} {{ [1, 2] + [3] }} {{ (1,) + (2,) }} {{ 'a' + 'b' }} {{ 'a' ~ 1 ~ none ~ 2.0 ~ [1] }})J",
                 R"J(ababab xxx [1, 1, 1] [1, 2, 3] (1, 2) ab a1None2.0[1])J"},
                {"concat_undefined", R"J({{ 'a' ~ nothing ~ 'b' }})J", R"J(ab)J"},
                {"add_str_int_error", R"J({{ 'a' + 1 }})J",
                 kError},  // TypeError: can only concatenate str (not "int") to str
                {"add_undefined_error", R"J({{ nothing + 1 }})J", kError},  // UndefinedError: 'nothing' is undefined
                {"div_zero_error", R"J({{ 1 / 0 }})J", kError},             // ZeroDivisionError: division by zero
                {"list_plus_tuple_error", R"J({{ [1] + (2,) }})J",
                 kError},  // TypeError: can only concatenate list (not "tuple") to list
                {"compare",
                 R"J({{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' != 'b' }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }})J",
                 R"J(True True False True True True True True True False)J"},
                {"compare_types_eq",
                 R"J({{ (1, 2) == [1, 2] }} {{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }} {{ none == none }} {{ nothing == nothing2 }} {{ nothing == none }})J",
                 R"J(False True True True False)J"},
                {"compare_error", R"J({{ 1 < 'a' }})J",
                 kError},  // TypeError: '<' not supported between instances of 'int' and 'str'
                {"and_or_values",
                 R"J({{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ none or [] }} {{ not 0 }} {{ not 'a' }} {{ nothing or 'dflt' }})J",
                 R"J(x b  [] True False dflt)J"},
                {"in_not_in",
                 R"J({{ 'ell' in s }} {{ 2 in l }} {{ 'a' in d }} {{ 'zz' not in d }} {{ 'x' in nothing }} {{ 5 not in l }} {{ 'a' in ['a', 'b'] }})J",
                 R"J(True True True True False True True)J"},
                {"in_type_error", R"J({{ 1 in 'abc' }})J",
                 kError},  // TypeError: 'in <string>' requires string as left operand, not int
                {"cond_expr",
                 R"J({{ 'y' if t else 'n' }} {{ 'y' if n else 'n' }} [{{ 'y' if false }}] {{ 1 if false else 2 if true else 3 }})J",
                 R"J(y n [] 2)J"},
                {"is_binds_tighter", R"J({{ 1 + 2 is odd }} {{ not 1 is odd }} {{ -3|abs }} {{ 10 - 2|abs }})J",
                 R"J(1 False 3 8)J"},
                {"attr_item_access",
                 R"J({{ d.a }} {{ d['b'] }} {{ l[0] }} {{ l[-1] }} {{ msgs[1].role }} {{ msgs[1]['content'] }} {{ l.0 }} {{ d.name }})J",
                 R"J(1 2 3 2 user hi 3 n)J"},
                {"dict_attr_prefers_methods",
                 R"J({{ d['items'] }} {{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }})J",
                 R"J(x [('b', 2), ('a', 1), ('items', 'x'), ('name', 'n')] ['b', 'a', 'items', 'name'] [2, 1, 'x', 'n'])J"},
                {"slices",
                 R"J({{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ s[0:5] }} {{ s[-5:] }} {{ u[1:4] }} {{ u[::-1] }} {{ l[5:] }} {{ s[::-2] }})J",
                 R"J([1, 2] [3, 1] [2, 1, 3] [3, 2] Hello World éll dlröw olléh [] drWolH)J"},
                {"string_index_unicode", R"J({{ u[1] }} {{ u[-1] }} {{ u|length }} {{ u|upper }} {{ 'ÉCOLE'|lower }})J",
                 R"J(é d 11 HÉLLO WÖRLD école)J"},
                {"undefined_attr_of_undefined", R"J({{ nothing.attr }})J",
                 kError},  // UndefinedError: 'nothing' is undefined
                {"undefined_attr_chain", R"J({{ d.missing.deeper }})J",
                 kError},  // UndefinedError: 'dict object' has no attribute 'missing'
                {"none_attr_is_undefined", R"J([{{ n.attr }}][{{ 5.attr }}][{{ s.nope }}])J", R"J([][][])J"},
                {"call_undefined_error", R"J({{ nothing() }})J", kError},  // UndefinedError: 'nothing' is undefined
                {"trim_blocks", R"J({% if true %}
A
{% endif %}
B
{# c #}
C)J",
                 R"J(A
B
C)J"},
                {"lstrip_blocks", R"J(  {% if true %}
    x
  {% endif %}
  {{ 'y' }}
	{% for i in [1] %}{{ i }}{% endfor %}
z)J",
                 R"J(    x
  y
1z)J"},
                {"minus_strips", R"J(a  
 {%- if true -%} 
 b 
 {%- endif -%}
  c {{- ' d ' -}} e)J",
                 R"J(abc d e)J"},
                {"plus_keeps", R"J(  {%+ if true %}x{% endif +%}
y)J",
                 R"J(  x
y)J"},
                {"raw_block", R"J({% raw %}{{ not evaluated }} {% if %}{% endraw %}|
  {%- raw -%}  {{ x }}  {%- endraw %}|)J",
                 R"J({{ not evaluated }} {% if %}|{{ x }}|)J"},
                {"comments", R"J(a{# one #}b{#- two -#}  c
  {# three #}
d)J",
                 R"J(abc
d)J"},
                {"trailing_newline_dropped", R"J(line
)J",
                 R"J(line)J"},
                {"crlf_normalized", R"J(a
b
c)J",
                 R"J(a
b
c)J"},
                {"variable_no_trim", R"J({{ 'x' }}
{{ 'y' }}
)J",
                 R"J(x
y)J"},
                {"for_basic_else",
                 R"J({% for x in l %}{{ x }},{% endfor %}|{% for x in el %}{{ x }}{% else %}empty{% endfor %}|{% for x in nothing %}x{% else %}undef{% endfor %})J",
                 R"J(3,1,2,|empty|undef)J"},
                {"loop_vars",
                 R"J({% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %})J",
                 R"J(1032TrueFalse3b;2121FalseFalse3ac;3210FalseTrue3b;)J"},
                {"loop_cycle", R"J({% for x in l %}{{ loop.cycle('odd', 'even') }} {% endfor %})J",
                 R"J(odd even odd )J"},
                {"for_unpack",
                 R"J({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [(1, 2), [3, 4]] %}{{ a + b }}{% endfor %})J",
                 R"J(b=2;a=1;items=x;name=n;37)J"},
                {"for_items_filter",
                 R"J({% for k, v in d|items %}{{ k }}{% endfor %}|{% for k, v in d|dictsort %}{{ k }}{% endfor %})J",
                 R"J(baitemsname|abitemsname)J"},
                {"for_over_dict_and_string",
                 R"J({% for k in d %}{{ k }}{% endfor %}|{% for c in 'héj' %}[{{ c }}]{% endfor %})J",
                 R"J(baitemsname|[h][é][j])J"},
                {"for_if_filter",
                 R"J({% for m in msgs if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }} {% endfor %})J",
                 R"J(1/2:hi 2/2:yo )J"},
                {"break_continue",
                 R"J({% for x in range(10) %}{% if x is odd %}{% continue %}{% endif %}{% if x > 6 %}{% break %}{% endif %}{{ x }}{% endfor %})J",
                 R"J(0246)J"},
                {"nested_loops",
                 R"J({% for i in [1, 2] %}{% for j in 'ab' %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %})J",
                 R"J(1a1 1b2 1|2a1 2b2 2|)J"},
                {"loop_scoping",
                 R"J({% set x = 'outer' %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }} {% endfor %}{{ x }})J",
                 R"J(outer1 outer2 outer)J"},
                {"loop_scope_per_iteration",
                 R"J({% for i in [1, 2] %}{% if i == 1 %}{% set y = 'set' %}{% endif %}[{{ y }}]{% endfor %})J",
                 R"J([set][])J"},
                {"unpack_error", R"J({% for a, b in [(1, 2, 3)] %}{% endfor %})J",
                 kError},  // ValueError: too many values to unpack (expected 2)
                {"iterate_int_error", R"J({% for x in 5 %}{% endfor %})J",
                 kError},  // TypeError: 'int' object is not iterable
                {"if_elif_else",
                 R"J({% for x in [0, 1, 2] %}{% if x == 0 %}zero{% elif x == 1 %}one{% else %}many{% endif %} {% endfor %})J",
                 R"J(zero one many )J"},
                {"if_truthiness",
                 R"J({% if el %}a{% endif %}{% if e %}b{% endif %}{% if d %}c{% endif %}{% if nothing %}d{% endif %}{% if 0.0 %}e{% endif %}{% if [0] %}f{% endif %})J",
                 R"J(cf)J"},
                {"set_simple_and_tuple",
                 R"J({% set a = 1 %}{% set b, c = 2, 3 %}{% set t1 = 4, 5 %}{{ a }}{{ b }}{{ c }}{{ t1 }})J",
                 R"J(123(4, 5))J"},
                {"set_block", R"J({% set x %}
  Hello {{ s }}!
{% endset %}[{{ x }}])J",
                 R"J([  Hello Hello World!
])J"},
                {"set_block_filter", R"J({% set x | upper | trim %}  shout  {% endset %}[{{ x }}])J", R"J([SHOUT])J"},
                {"namespace",
                 R"J({% set ns = namespace(count=0, items=[]) %}{% for m in msgs %}{% set ns.count = ns.count + 1 %}{% set ns.items = ns.items + [m.role] %}{% endfor %}{{ ns.count }} {{ ns.items }} {{ ns }})J",
                 R"J(3 ['system', 'user', 'assistant'] <Namespace {'count': 3, 'items': ['system', 'user', 'assistant']}>)J"},
                {"namespace_from_dict", R"J({% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{{ ns.c }})J",
                 R"J(12)J"},
                {"namespace_set_non_namespace", R"J({% set x = 1 %}{% set x.y = 2 %})J",
                 kError},  // TemplateRuntimeError: cannot assign attribute on non-namespace object
                {"set_top_level_shadow", R"J({% set s = s[:5] %}{{ s }})J", R"J(Hello)J"},
                {"macro_defaults_kwargs",
                 R"J({% macro greet(name, greeting='Hello', punct=greeting ~ '!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Hi') }} {{ greet(punct='?', name='Cy') }})J",
                 R"J(Hello, AnnHello! Hi, BobHi! Hello, Cy?)J"},
                {"macro_missing_arg", R"J({% macro m(a, b) %}[{{ a }}|{{ b }}]{% endmacro %}{{ m(1) }})J", R"J([1|])J"},
                {"macro_varargs_kwargs",
                 R"J({% macro m(a) %}{{ a }} {{ varargs }} {{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }})J",
                 R"J(1 (2, 3) {'x': 4})J"},
                {"macro_too_many_args", R"J({% macro m(a) %}{% endmacro %}{{ m(1, 2) }})J",
                 kError},  // TypeError: macro 'm' takes not more than 1 argument(s)
                {"macro_unknown_kwarg", R"J({% macro m(a) %}{% endmacro %}{{ m(b=2) }})J",
                 kError},  // TypeError: macro 'm' takes no keyword argument 'b'
                {"macro_recursion",
                 R"J({% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(6) }})J",
                 R"J(720)J"},
                {"macro_sees_globals_and_ns",
                 R"J({% set ns = namespace(v=1) %}{% macro bump() %}{% set ns.v = ns.v + 1 %}{{ s|length }}{% endmacro %}{{ bump() }}{{ bump() }}{{ ns.v }})J",
                 R"J(11113)J"},
                {"macro_local_set",
                 R"J({% set x = 1 %}{% macro m() %}{% set x = 2 %}{{ x }}{% endmacro %}{{ m() }}{{ x }})J", R"J(21)J"},
                {"macro_repr_and_returns_string",
                 R"J({% macro m() %}x{% endmacro %}{{ m }} {{ m()|length }} {{ m() is string }})J",
                 R"J(<Macro 'm'> 1 True)J"},
                {"call_block",
                 R"J({% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ s }}{% endcall %})J",
                 R"J(<b>bold Hello World</b>)J"},
                {"call_block_args",
                 R"J({% macro each(items) %}{% for i in items %}{{ caller(i, loop.index) }}{% endfor %}{% endmacro %}{% call(x, n) each(['a', 'b']) %}{{ n }}={{ x }};{% endcall %})J",
                 R"J(1=a;2=b;)J"},
                {"filter_block",
                 R"J({% filter upper %}hello {{ s }}{% endfilter %}|{% filter replace('a', 'o')|title %}banana split{% endfilter %})J",
                 R"J(HELLO HELLO WORLD|Bonono Split)J"},
                {"with_block", R"J({% with a = 1, b = l|length %}{{ a + b }}{% endwith %}[{{ a }}])J", R"J(4[])J"},
                {"f_case",
                 R"J({{ s|upper }} {{ s|lower }} {{ 'hello wORLD-x(y'|title }} {{ 'hello WORLD'|capitalize }} {{ 'ab'|center(6) }}|{{ 'abc'|center(6) }}|)J",
                 R"J(HELLO WORLD hello world Hello World-X(Y Hello world   ab  | abc  |)J"},
                {"f_trim", R"J([{{ '  a b 
'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ nothing|trim }}][{{ ' 　x '|trim }}])J",
                 R"J([a b][a][][x])J"},
                {"f_replace",
                 R"J({{ s|replace('l', 'L') }} {{ s|replace('l', 'L', 2) }} {{ 'abc'|replace('', '-') }})J",
                 R"J(HeLLo WorLd HeLLo World -a-b-c-)J"},
                {"f_join",
                 R"J({{ l|join }} {{ l|join(', ') }} {{ msgs|join('|', attribute='role') }} {{ nothing|join(',') }})J",
                 R"J(312 3, 1, 2 system|user|assistant )J"},
                {"f_default",
                 R"J({{ nothing|default('dflt') }} {{ n|default('x') }} {{ e|default('empty', true) }} {{ e|d('e2', boolean=true) }} {{ 0|default(5) }})J",
                 R"J(dflt None empty e2 0)J"},
                {"f_first_last",
                 R"J({{ l|first }} {{ l|last }} {{ s|first }} {{ s|last }} {{ d|first }} [{{ el|first }}])J",
                 R"J(3 2 H d b [])J"},
                {"f_length_count",
                 R"J({{ l|length }} {{ s|count }} {{ d|length }} {{ nothing|length }} {{ u|length }})J",
                 R"J(3 11 4 0 11)J"},
                {"f_list_string",
                 R"J({{ 'abc'|list }} {{ d|list }} {{ 1|string }} {{ none|string }} {{ [1, 'a']|string }} {{ (l|string)|length }})J",
                 R"J(['a', 'b', 'c'] ['b', 'a', 'items', 'name'] 1 None [1, 'a'] 9)J"},
                {"f_int_float",
                 R"J({{ '42'|int }} {{ ' 7 '|int }} {{ '3.9'|int }} {{ 'x'|int }} {{ 'x'|int(-1) }} {{ 2.9|int }} {{ '0x1A'|int(0, 16) }} {{ '1e3'|int }} {{ '2.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ true|int }})J",
                 R"J(42 7 3 0 -1 2 26 1000 2.5 0.0 3.0 1)J"},
                {"f_abs_round",
                 R"J({{ -5|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.4|round(0, 'ceil') }} {{ 2.6|round(0, 'floor') }} {{ 7|round }} {{ 1234.5678|round(-2) }})J",
                 R"J(5 2.5 2.0 4.0 2.67 3.0 2.0 7 1200.0)J"},
                {"f_items_dictsort",
                 R"J({{ d|items|list }} {{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ {'b': 1, 'A': 2, 'a': 0}|dictsort }} {{ {'b': 1, 'A': 2, 'a': 0}|dictsort(true) }} {{ {'x': 2, 'y': 1}|dictsort(by='value') }})J",
                 R"J([('b', 2), ('a', 1), ('items', 'x'), ('name', 'n')] [('a', 1), ('b', 2), ('items', 'x'), ('name', 'n')] [('name', 'n'), ('items', 'x'), ('b', 2), ('a', 1)] [('A', 2), ('a', 0), ('b', 1)] [('A', 2), ('a', 0), ('b', 1)] [('y', 1), ('x', 2)])J"},
                {"f_map",
                 R"J({{ msgs|map(attribute='role')|list }} {{ ['a', 'b']|map('upper')|join }} {{ [1, 2]|map('string')|list }} {{ msgs|map(attribute='missing', default='?')|list }} {{ [' a ']|map('trim')|list }})J",
                 R"J(['system', 'user', 'assistant'] AB ['1', '2'] ['?', '?', '?'] ['a'])J"},
                {"f_select_reject",
                 R"J({{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }} {{ ['a', 'b', 'code']|reject('equalto', 'code')|list }} {{ [1, 5, 9]|select('gt', 4)|list }} {{ [1, 5, 9]|select('in', [1, 9])|list }})J",
                 R"J([1, 3] [2, 4] [1, 'a'] ['a', 'b'] [5, 9] [1, 9])J"},
                {"f_selectattr",
                 R"J({{ msgs|selectattr('role', 'equalto', 'user')|list }} {{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='content')|join(',') }} {{ msgs|selectattr('content')|list|length }} {{ [{'a': 1}, {'b': 2}]|selectattr('a', 'defined')|list }})J",
                 R"J([{'role': 'user', 'content': 'hi'}] sys,yo 3 [{'a': 1}])J"},
                {"f_unique_sort",
                 R"J({{ ['b', 'A', 'a', 'B']|unique|list }} {{ ['b', 'A', 'a']|unique(true)|list }} {{ [3, 1, 2]|sort }} {{ ['b', 'A', 'a']|sort }} {{ ['b', 'A', 'a']|sort(case_sensitive=true) }} {{ l|sort(reverse=true) }} {{ msgs|sort(attribute='role')|map(attribute='role')|list }})J", R"J(['b', 'A'] ['b', 'A', 'a'] [1, 2, 3] ['A', 'a', 'b'] ['A', 'a', 'b'] [3, 2, 1] ['assistant', 'system', 'user'])J"},
                {"f_reverse", R"J({{ l|reverse|list }} {{ s|reverse }} {{ (1, 2)|reverse|list }})J",
                 R"J([2, 1, 3] dlroW olleH [2, 1])J"},
                {"f_min_max_sum",
                 R"J({{ l|min }} {{ l|max }} {{ l|sum }} {{ ['b', 'A']|max }} {{ [1.5, 2]|sum(start=1) }} {{ msgs|max(attribute='role')|attr('items') is defined }})J",
                 R"J(1 3 6 b 4.5 True)J"},
                {"f_batch_slice",
                 R"J({{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 'x')|list }} {{ [1, 2, 3, 4, 5]|slice(2)|list }})J",
                 R"J([[1, 2], [3, 4], [5]] [[1, 2], [3, 'x']] [[1, 2, 3], [4, 5]])J"},
                {"f_indent", R"J({{ 'a
b

c'|indent }}|{{ 'a
b'|indent(2, true) }}|{{ 'a

b'|indent(2, blank=true) }}|{{ 'x
y'|indent('> ') }}|{{ ''|indent(first=true) }})J",
                 R"J(a
    b

    c|  a
  b|a
  
  b|x
> y|    )J"},
                {"f_wordcount_truncate",
                 R"J({{ 'hello world, foo_bar 42'|wordcount }} {{ 'abcdefghijklmnopqrstuvwxyz'|truncate(10) }} {{ 'one two three four five six'|truncate(12, leeway=0) }} {{ 'one two three'|truncate(9, true, '..', 0) }})J",
                 R"J(4 abcdefg... one two... one two..)J"},
                {"f_escape_safe",
                 R"J({{ '<a href="x">&\'</a>'|e }} {{ '<b>'|safe }} {{ ('<b>'|safe + '<i>') }} {{ '<b>'|escape|escape }} {{ '<b>'|forceescape }})J",
                 R"J(&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; <b> <b>&lt;i&gt; &lt;b&gt; &lt;b&gt;)J"},
                {"f_format",
                 R"J({{ '%s is %d years' | format('Bob', 30) }} {{ '%05.2f|%-4s|%x' % (3.14159, 'ab', 255) }} {{ '%(a)s+%(b)s' % {'a': 1, 'b': 2} }} {{ '%r' % ('x',) }})J",
                 R"J(Bob is 30 years 03.14|ab  |ff 1+2 'x')J"},
                {"f_center_attr", R"J({{ 'x'|center(5) }}|{{ d|attr('a') }}|{{ d|attr('items') is defined }})J",
                 R"J(  x  ||True)J"},
                {"f_tojson",
                 R"J({{ {'a': [1, 2.5, none, true, 'é"\n\t']}|tojson }}|{{ l|tojson }}|{{ 'x'|tojson }}|{{ n|tojson }}|{{ {'b': 1, 'a': 2}|tojson }})J",
                 R"J({"a": [1, 2.5, null, true, "é\"\n\t"]}|[3, 1, 2]|"x"|null|{"b": 1, "a": 2})J"},
                {"f_tojson_indent", R"J({{ {'a': [1, {}], 'b': [], 'c': {'d': 'e'}}|tojson(indent=2) }}
{{ [1, [2]]|tojson(indent='	') }}
{{ {'a': 1}|tojson(indent=0) }})J",
                 R"J({
  "a": [
    1,
    {}
  ],
  "b": [],
  "c": {
    "d": "e"
  }
}
[
	1,
	[
		2
	]
]
{
"a": 1
})J"},
                {"f_tojson_options",
                 R"J({{ {'b': 1, 'a': 'é😀'}|tojson(sort_keys=true, ensure_ascii=true) }} {{ {'a': [1, 2]}|tojson(separators=(',', ':')) }} {{ {1: 'x', none: 'y', true: 'z'}|tojson }} {{ 1e16|tojson }})J",
                 R"J({"a": "\u00e9\ud83d\ude00", "b": 1} {"a":[1,2]} {"1": "z", "null": "y"} 1e+16)J"},
                {"f_tojson_undefined_error", R"J({{ nothing|tojson }})J",
                 kError},  // TypeError: Object of type Undefined is not JSON serializable
                {"f_tojson_generator_error", R"J({{ msgs|map(attribute='role')|tojson }})J",
                 kError},  // TypeError: Object of type generator is not JSON serializable
                {"generator_length_error", R"J({{ msgs|map(attribute='role')|length }})J",
                 kError},  // TypeError: object of type 'generator' has no len()
                {"generator_ok_uses",
                 R"J({{ msgs|map(attribute='role')|first }} {{ msgs|map(attribute='role')|join(',') }} {{ 'user' in msgs|map(attribute='role') }} {{ (el|select) is iterable }} {{ (el|select) is sequence }} {% if el|select %}truthy{% endif %})J",
                 R"J(system system,user,assistant True True False truthy)J"},
                {"unknown_filter_soft_if",
                 R"J({% if false %}{{ x|nosuchfilter }}{% endif %}ok{{ 'y' if true else x|nosuchfilter2 }})J",
                 R"J(oky)J"},
                {"unknown_filter_runtime_in_if", R"J({% if true %}{{ x|nosuchfilter }}{% endif %})J",
                 kError},  // TemplateRuntimeError: No filter named 'nosuchfilter' found.
                {"unknown_test_soft", R"J({% if false %}{{ x is nosuchtest }}{% endif %}ok)J", R"J(ok)J"},
                {"tests_types",
                 R"J({{ s is string }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ d is mapping }} {{ l is mapping }} {{ l is iterable }} {{ s is iterable }} {{ 1 is iterable }} {{ l is sequence }} {{ s is sequence }} {{ d is sequence }} {{ nothing is iterable }} {{ range is callable }})J",
                 R"J(True True True True True False True True True False True True False True True True True True)J"},
                {"tests_values",
                 R"J({{ n is none }} {{ nothing is none }} {{ nothing is defined }} {{ nothing is undefined }} {{ t is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }})J",
                 R"J(True False False True True False True False True True True False)J"},
                {"tests_compare",
                 R"J({{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is gt 2 }} {{ 2 is le 2 }} {{ 2 is ge 3 }} {{ 'a' is in 'abc' }} {{ 3 is in l }} {{ 'ab' is lower }} {{ 'AB' is upper }} {{ n is sameas none }} {{ 'upper' is filter }} {{ 'odd' is test }} {{ '<'|e is escaped }})J",
                 R"J(True False True True False True False True True True True True True True True)J"},
                {"tests_negated",
                 R"J({{ nothing is not defined }} {{ s is not string }} {{ not s is string }} {{ n is not none and t }})J",
                 R"J(True False False False)J"},
                {"test_defined_on_undefined_chain_error", R"J({{ nothing.x is defined }})J",
                 kError},  // UndefinedError: 'nothing' is undefined
                {"str_methods_case",
                 R"J({{ s.upper() }} {{ s.lower() }} {{ 'hello world'.title() }} {{ "they're 3rd".title() }} {{ 'hELLO'.capitalize() }} {{ 'AbC'.swapcase() }})J",
                 R"J(HELLO WORLD hello world Hello World They'Re 3Rd Hello aBc)J"},
                {"str_methods_strip",
                 R"J([{{ '  x  '.strip() }}][{{ '  x  '.lstrip() }}][{{ '  x  '.rstrip() }}][{{ 'xyxay'.strip('xy') }}][{{ '--a--'.lstrip('-') }}][{{ 'a
'.rstrip('
') }}])J",
                 R"J([x][x  ][  x][a][a--][a])J"},
                {"str_methods_split",
                 R"J({{ 'a,b,,c'.split(',') }} {{ '  a  b  '.split() }} {{ 'a b c'.split(None, 1) }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ ' a b c '.rsplit(None, 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ 'l1
l2
l3'.splitlines() }})J",
                 R"J(['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a', 'b,c'] ['a,b', 'c'] [' a b', 'c'] z ['l1', 'l2', 'l3'])J"},
                {"str_methods_find",
                 R"J({{ s.find('o') }} {{ s.rfind('o') }} {{ s.find('z') }} {{ s.find('o', 5) }} {{ u.find('w') }} {{ s.index('W') }} {{ s.count('l') }} {{ s.count('') }} {{ 'aaa'.count('aa') }})J",
                 R"J(4 7 -1 7 6 6 3 12 1)J"},
                {"str_methods_index_error", R"J({{ s.index('zz') }})J", kError},  // ValueError: substring not found
                {"str_methods_starts",
                 R"J({{ s.startswith('Hell') }} {{ s.endswith('World') }} {{ s.startswith(('x', 'H')) }} {{ s.endswith('.') }} {{ s.startswith('World', 6) }} {{ ''.startswith('') }})J",
                 R"J(True True True False True True)J"},
                {"str_methods_misc",
                 R"J({{ s.replace('o', '0') }} {{ s.replace('o', '0', 1) }} {{ '-'.join(['a', 'b']) }} {{ 'ab'.ljust(4, '.') }}| {{ 'ab'.rjust(4) }} {{ 'ab'.center(5, '*') }} {{ '42'.zfill(5) }} {{ '-4'.zfill(4) }} {{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ 'prefix_x'.removeprefix('prefix_') }})J",
                 R"J(Hell0 W0rld Hell0 World a-b ab..|   ab **ab* 00042 -004 ('a', '=', 'b=c') ('a=b', '=', 'c') x)J"},
                {"str_methods_is",
                 R"J({{ '123'.isdigit() }} {{ '12a'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'ab1'.isalnum() }} {{ ' 	'.isspace() }} {{ ''.isspace() }} {{ 'abc'.islower() }} {{ 'ABC'.isupper() }} {{ 'Ab'.isupper() }})J",
                 R"J(True False True True True False True True False)J"},
                {"str_format_method",
                 R"J({{ '{} + {} = {}'.format(1, 2, 3) }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{name}!'.format(name='x') }} {{ '{:>5}|{:<5}|{:^5}|{:05d}|{:.2f}|{!r}'.format('a', 'b', 'c', 42, 3.14159, 'q') }})J", R"J(1 + 2 = 3 aba x!     a|b    |  c  |00042|3.14|'q')J"},
                {"dict_methods",
                 R"J({{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d.keys()|list }} {{ d.items()|list|length }} {{ 'a' in d.keys() }})J",
                 R"J(1 None dflt ['b', 'a', 'items', 'name'] 4 True)J"},
                {"list_methods", R"J({{ l.index(1) }} {{ [1, 2, 1].count(1) }} {{ (1, 2).index(2) }})J", R"J(1 2 1)J"},
                {"list_append_unsafe", R"J({{ l.append(4) }})J",
                 kError},  // SecurityError: access to attribute 'append' of 'list' object is unsafe.
                {"dict_update_unsafe", R"J({{ d.update({'x': 1}) }})J",
                 kError},  // SecurityError: access to attribute 'update' of 'dict' object is unsafe.
                {"unsafe_attr_prints_empty", R"J([{{ l.append }}])J", R"J([])J"},
                {"globals_range",
                 R"J({{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }})J",
                 R"J([0, 1, 2] [1, 3, 5] [5, 3, 1] [])J"},
                {"globals_range_too_big", R"J({{ range(100001)|length }})J",
                 kError},  // OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).
                {"globals_dict",
                 R"J({{ dict(a=1, b=2) }} {{ dict([('x', 1)]) }} {{ dict(d, z=0)|length }} {{ dict() }})J",
                 R"J({'a': 1, 'b': 2} {'x': 1} 5 {})J"},
                {"raise_exception",
                 R"J({% if msgs[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %})J",
                 kError},  // raise_exception: System role not supported
                {"raise_exception_formatted", R"J({{ raise_exception('Bad role: ' ~ msgs[2].role ~ '!') }})J",
                 kError},  // raise_exception: Bad role: assistant!
                {"parse_error_unclosed", R"J({% if true %}x)J",
                 kError},  // TemplateSyntaxError: Unexpected end of template. Jinja was looking for the following tags:
                {"parse_error_bad_expr", R"J({{ 1 + }})J",
                 kError},  // TemplateSyntaxError: unexpected 'end of print statement'
                {"parse_error_unknown_tag", R"J({% frobnicate %})J",
                 kError},  // TemplateSyntaxError: Encountered unknown tag 'frobnicate'.
                {"parse_error_endfor_mismatch", R"J({% for x in l %}{% endif %})J",
                 kError},  // TemplateSyntaxError: Encountered unknown tag 'endif'. Jinja was looking for the following
                {"parse_error_unbalanced", R"J({{ (1 }})J",
                 kError},  // TemplateSyntaxError: unexpected '}', expected ')'
                {"parse_error_unterminated_string", R"J({{ 'abc }})J",
                 kError},  // TemplateSyntaxError: unexpected char "'" at 3
                {"parse_error_chained_is", R"J({{ 1 is odd is even }})J",
                 kError},  // TemplateSyntaxError: You cannot chain multiple tests with is
                {"break_outside_loop", R"J({% break %})J",
                 kError},  // SyntaxError: 'break' outside loop (<template>, line 11)
};

class JinjaCaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(JinjaCaseTest, MatchesJinja2) {
  const Case& c = GetParam();
  auto out = render(c.source, context());
  if (std::string(c.expected) == kError) {
    EXPECT_FALSE(out.ok()) << "expected an error, got: " << *out;
    if (!out.ok()) {
      EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
      EXPECT_EQ(out.status().message().rfind("chat template", 0), 0u) << out.status().message();
    }
  } else {
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(*out, c.expected);
  }
}

INSTANTIATE_TEST_SUITE_P(Features, JinjaCaseTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// ---- Error messages ----------------------------------------------------------------------

TEST(JinjaTest, RaiseExceptionMessageIsVerbatim) {
  auto out = render("a\n{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}",
                    context());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(),
            "chat template: raise_exception: Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(JinjaTest, ErrorsNameConstructAndLine) {
  struct Expect {
    const char* source;
    const char* message;
  };
  const Expect kExpected[] = {
      {"ok\n\n{{ x|foo }}", "chat template line 3: unknown filter 'foo'"},
      {"{% if x is frob %}{% endif %}\n{{ y is frob }}", "chat template line 2: unknown test 'frob'"},
      {"\n{% if true %}{{ x|foo }}{% endif %}", "chat template line 2: unknown filter 'foo'"},
      {"\n\n{{ s.nosuch() }}", "chat template line 3: 'str object' has no attribute 'nosuch'"},
      {"{{ 1 }}\n{{ s + 1 }}", "chat template line 2: can only concatenate str (not \"int\") to str"},
      {"{% for x in l %}\n{{ x.y.z }}{% endfor %}", "chat template line 2: 'int object' has no attribute 'y'"},
      {"{% frob %}", "chat template line 1: unknown tag 'frob'"},
      {"{{ s|urlize }}", "chat template line 1: filter 'urlize' is not supported"},
      {"{{ l|pprint }}", "chat template line 1: filter 'pprint' is not supported"},
      {"line1\n{% for x in l %}", "chat template line 2: unexpected end of template, expected 'endfor' or 'else'"},
      {"{{ l.append(1) }}", "chat template line 1: access to attribute 'append' of 'list' object is unsafe."},
  };
  for (const Expect& e : kExpected) {
    auto out = render(e.source, context());
    ASSERT_FALSE(out.ok()) << e.source;
    EXPECT_EQ(out.status().message(), e.message) << e.source;
  }
}

// ---- Bounds: nothing may hang, exhaust memory or overflow the stack ------------------------

TEST(JinjaTest, OutputIsCapped) {
  RenderLimits limits;
  limits.max_output_bytes = 1000;
  auto out = render("{% for i in range(100) %}{{ 'x' * 20 }}{% endfor %}", context(), limits);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("output exceeds 1000 bytes"), std::string::npos) << out.status().message();
  out = render("{{ 'x' * 2000 }}", context(), limits);
  EXPECT_FALSE(out.ok());
  out = render("{% set ns = namespace(s='ab') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
               context(), limits);
  EXPECT_FALSE(out.ok());
}

TEST(JinjaTest, StepsAreCapped) {
  RenderLimits limits;
  limits.max_steps = 100000;
  auto out = render("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", context(), limits);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("evaluation budget"), std::string::npos) << out.status().message();
}

TEST(JinjaTest, RecursionIsCapped) {
  auto out = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", context());
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("nested deeper than 100"), std::string::npos) << out.status().message();
}

TEST(JinjaTest, DeepNestingIsAParseError) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_FALSE(render(deep, context()).ok());
  std::string lists = "{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}";
  EXPECT_FALSE(render(lists, context()).ok());
  std::string nots = "{{ " + std::string(0, ' ');
  for (int i = 0; i < 5000; ++i)
    nots += "not ";
  EXPECT_FALSE(render(nots + "1 }}", context()).ok());
  std::string ifs;
  for (int i = 0; i < 5000; ++i)
    ifs += "{% if true %}";
  EXPECT_FALSE(render(ifs, context()).ok());
}

TEST(JinjaTest, DeepValuesAreRejected) {
  auto out = render(
      "{% set ns = namespace(v=[]) %}{% for i in range(1000) %}{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v|length }}",
      context());
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("nested too deeply"), std::string::npos) << out.status().message();
}

TEST(JinjaTest, CyclesAreFreed) {
  // A namespace holding itself and a macro in the scope it closes over: the evaluator breaks
  // both cycles (LeakSanitizer would report them otherwise).
  auto out = render(
      "{% set ns = namespace() %}{% set ns.self = ns %}{% macro m() %}{{ ns.self.self is defined }}"
      "{% endmacro %}{{ m() }}",
      context());
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(*out, "True");
}

TEST(JinjaTest, JsonConversionKeepsOrderAndTypes) {
  auto v = from_json(nlohmann::ordered_json::parse(R"({"z": 1, "a": [1.5, "x", null, true, {"k": -2}]})"));
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(repr(*v), "{'z': 1, 'a': [1.5, 'x', None, True, {'k': -2}]}");
  std::string deep(1000, '[');
  deep += std::string(1000, ']');
  EXPECT_FALSE(from_json(nlohmann::json::parse(deep)).ok());
}

TEST(JinjaTest, FloatRepr) {
  EXPECT_EQ(format_float(1.0), "1.0");
  EXPECT_EQ(format_float(0.1), "0.1");
  EXPECT_EQ(format_float(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(format_float(1e22), "1e+22");
  EXPECT_EQ(format_float(123456789012345678.0), "1.2345678901234568e+17");
  EXPECT_EQ(format_float(1.0 / 3), "0.3333333333333333");
}

}  // namespace
}  // namespace bw::jinja
