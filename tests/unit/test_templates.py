"""Templates of the config tree (`reconciler.templates`): the sandbox holds against
the known Jinja2 escape payloads, the loader stays inside the tree (symlinks
included), every limit stops a render that crosses it with a `file:line` error,
and with a secret in scope an error says where and which class, nothing more.

The end-to-end versions (the CLI and the daemon) are in
tests/e2e/test_template_attacks.py; they reuse PAYLOADS and LEAKS from here."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.model import SENSITIVE, PrepareContext, Sensitive, SpecError
from reconciler.templates import (
    WITHHELD,
    TemplateLimits,
    render,
    resolve_variables,
)

SENTINEL = "SENTINEL"
"""Replaced by a path each payload tries to create: created means code ran."""

PAYLOADS: dict[str, str] = {
    "cycler globals os.system": "{{ cycler.__init__.__globals__.os.system('touch SENTINEL') }}",
    "joiner globals popen": "{{ joiner.__init__.__globals__.os.popen('touch SENTINEL').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__.os.system('touch SENTINEL') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch SENTINEL') }}",
    "lipsum builtins import": (
        "{{ lipsum.__globals__.__builtins__.__import__('os').system('touch SENTINEL') }}"
    ),
    "range globals": "{{ range.__globals__.os.system('touch SENTINEL') }}",
    "range class mro": (
        "{{ range.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__"
        ".os.system('touch SENTINEL') }}"
    ),
    "str mro subclasses": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').system('touch SENTINEL') }}"
        "{% endif %}{% endfor %}"
    ),
    "tuple base subclasses": (
        "{% for c in ().__class__.__base__.__subclasses__() %}"
        "{% if 'Popen' in c.__name__ %}{{ c(['touch', 'SENTINEL']) }}{% endif %}{% endfor %}"
    ),
    "dict mro method": (
        "{% for c in dict.mro()[-1]|attr('__subclasses__') %}"
        "{{ c.__init__.__globals__.os.system('touch SENTINEL') }}{% endfor %}"
    ),
    "self TemplateReference context": (
        "{{ self._TemplateReference__context.cycler.__init__.__globals__"
        ".os.system('touch SENTINEL') }}"
    ),
    "self init globals": (
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch SENTINEL') }}"
    ),
    "flask config": (
        "{{ config.__class__.__init__.__globals__['os'].popen('touch SENTINEL').read() }}"
    ),
    "flask request": (
        "{{ request.application.__globals__.__builtins__.__import__('os')"
        ".popen('touch SENTINEL').read() }}"
    ),
    "flask get_flashed_messages": (
        "{{ get_flashed_messages.__globals__.__builtins__.open('SENTINEL', 'w').write('x') }}"
    ),
    "flask url_for": "{{ url_for.__globals__.os.system('touch SENTINEL') }}",
    "attr filter": (
        "{{ cycler|attr('__init__')|attr('__globals__')|attr('__getitem__')('os')"
        "|attr('system')('touch SENTINEL') }}"
    ),
    "attr filter hex escapes": (
        "{{ cycler|attr('\\x5f\\x5finit\\x5f\\x5f')|attr('\\x5f\\x5fglobals\\x5f\\x5f')"
        "|attr('\\x5f\\x5fgetitem\\x5f\\x5f')('os')|attr('system')('touch SENTINEL') }}"
    ),
    "attr filter unicode escapes": (
        "{{ cycler|attr('\\u005f\\u005finit\\u005f\\u005f')"
        "|attr('\\u005f\\u005fglobals\\u005f\\u005f')|attr('get')('os')"
        "|attr('system')('touch SENTINEL') }}"
    ),
    "subscript instead of dots": (
        "{{ cycler['__init__']['__globals__']['os']['system']('touch SENTINEL') }}"
    ),
    "name built by concatenation": (
        "{{ cycler.__init__['__glo' ~ 'bals__'].os.system('touch SENTINEL') }}"
    ),
    "name built by join": (
        "{{ cycler[['_', '_', 'init', '_', '_']|join]['__globals__'].os.system('touch SENTINEL') }}"
    ),
    "str.format attribute": "{{ '{0.__init__.__globals__[os].system}'.format(cycler) }}",
    "str.format call result": (
        "{{ '{0.__init__.__globals__}'.format(cycler).os.system('touch SENTINEL') }}"
    ),
    "str.format_map": "{{ '{x.__init__.__globals__[os]}'.format_map({'x': cycler}) }}",
    "format via attr filter (CVE-2025-27516)": (
        "{{ ('{0.__init__.__globals__[os].system}'|attr('format'))(cycler) }}"
    ),
    "format stored and called (CVE-2024-56326)": (
        "{% set f = '{0.__init__.__globals__[os].system}'.format %}{{ f(cycler) }}"
    ),
    "format through map": (
        "{{ (['{0.__init__.__globals__[os].system}']|map(attribute='format')|first)(cycler) }}"
    ),
    "percent format": "{{ '%s'|format(cycler.__init__.__globals__.os.system('touch SENTINEL')) }}",
    "map attribute": (
        "{{ [cycler]|map(attribute='__init__.__globals__.os')|map(attribute='system')"
        "|map('touch SENTINEL')|list }}"
    ),
    "macro func globals": (
        "{% macro m() %}{% endmacro %}{{ m._func.__globals__.os.system('touch SENTINEL') }}"
    ),
    "loop object": (
        "{% for x in [1] %}{{ loop.__class__.__init__.__globals__.os.system('touch SENTINEL') }}"
        "{% endfor %}"
    ),
    "joiner call globals": "{{ joiner().__call__.__globals__.os.system('touch SENTINEL') }}",
    "exec through builtins": (
        "{{ cycler.__init__.__globals__.__builtins__.exec(\"open('SENTINEL', 'w')\") }}"
    ),
    "variable's class": "{{ x.__class__.__mro__[1].__subclasses__() }}",
    "import a python module": "{% import 'os' as os %}{{ os.system('touch SENTINEL') }}",
    "filter block named like a function": "{% filter system %}touch SENTINEL{% endfilter %}",
    "generator frame": (
        "{{ (range(1)|map('string')).gi_frame.f_globals.os.system('touch SENTINEL') }}"
    ),
}
"""Known Jinja2 sandbox-escape payloads (SSTI cheat sheets, the Jinja2 CVEs of
2016-2025), each trying to create SENTINEL."""


@dataclass
class Tree:
    config: Path
    sentinel: Path

    def write(self, name: str, text: str) -> Path:
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace(SENTINEL, str(self.sentinel)))
        return path

    def ctx(self) -> PrepareContext:
        return PrepareContext(self.config / "app.yaml", self.config)

    def render(self, name: str, limits: TemplateLimits | None = None, **variables: object) -> str:
        return render(self.ctx(), name, variables, limits)

    def error(self, name: str, limits: TemplateLimits | None = None, **variables: object) -> str:
        with pytest.raises(SpecError) as info:
            self.render(name, limits, **variables)
        assert info.value.field == "template"
        return str(info.value)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    config = tmp_path / "config"
    config.mkdir()
    yield Tree(config, tmp_path / "pwned")


# --- the sandbox --------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=list(PAYLOADS))
def test_no_escape_payload_runs_code_and_each_fails_with_file_and_line(
    tree: Tree, payload: str
) -> None:
    tree.write("t.j2", "line one\n" + payload + "\n")
    message = tree.error("t.j2", x="text")
    assert not tree.sentinel.exists()
    assert re.match(r"^t\.j2:2: \S", message), message
    assert "Traceback" not in message


def test_lists_and_dicts_cannot_be_changed(tree: Tree) -> None:
    tree.write("t.j2", "{{ items.append(3) }}")
    assert "unsafe" in tree.error("t.j2", items=[1, 2])
    tree.write("t.j2", "{{ d.update({'a': 2}) }}")
    assert "unsafe" in tree.error("t.j2", d={"a": 1})


def test_a_template_file_name_is_not_code(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    # CVE-2024-56201: a crafted file name used to reach the compiled code
    monkeypatch.chdir(tree.config)
    name = "t{__import__('os').system('touch pwned')}'\"x.j2"
    tree.write(name, "{% from 'lib.j2' import nothing %}{{ nothing }}")
    tree.write("lib.j2", "{% macro m() %}{% endmacro %}")
    tree.write("main.j2", "{% include " + repr(name) + " %}")
    tree.error("main.j2")
    assert not (tree.config / "pwned").exists()


def test_ordinary_templates_still_render(tree: Tree) -> None:
    tree.write("lib/macros.j2", "{% macro kv(k, v) %}{{ k }} = {{ v }}{% endmacro %}")
    tree.write("part.j2", "[part]\n")
    tree.write(
        "sub/t.j2",
        "{% import 'lib/macros.j2' as m %}{% include 'part.j2' %}"
        "{{ m.kv('port', port) }}\n{{ '%s-%03d'|format(name, 7) }} "
        "{{ hosts|join(',') }} {{ name|upper|reverse }} {{ '{0}:{1}'.format(name, port) }}\n"
        "{% for h in hosts %}{{ loop.index }}{{ h[:1] }}{% endfor %} {{ 2 ** 10 }} "
        "{{ ('ab' * 3)|replace('b', 'c') }} {{ {'a': 1}|dictsort }}\n",
    )
    (tree.config / "sub" / "app.yaml").write_text("")
    ctx = PrepareContext(tree.config / "sub" / "app.yaml", tree.config)
    text = render(ctx, "t.j2", {"port": 8080, "name": "web", "hosts": ["a", "b"]})
    assert text == ("[part]\nport = 8080\nweb-007 a,b BEW web:8080\n1a2b 1024 acacac [('a', 1)]\n")
    assert not isinstance(text, Sensitive)


# --- confined to the config tree ----------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "{% include 'link.j2' %}",
        "{% import 'link.j2' as x %}",
        "{% extends 'link.j2' %}",
        "{% from 'link.j2' import x %}",
        "{% include 'dirlink/passwd' %}",
        "{% include '../outside.j2' %}",
        "{% include '/etc/passwd' %}",
        "{% include 'sub/../../outside.j2' %}",
        "{% include './../outside.j2' %}",
    ],
)
def test_nothing_outside_the_tree_is_read_through_a_template(tree: Tree, statement: str) -> None:
    outside = tree.config.parent / "outside.j2"
    outside.write_text("OUTSIDE-CONTENT\n")
    (tree.config / "link.j2").symlink_to(outside)
    (tree.config / "dirlink").symlink_to("/etc")
    tree.write("t.j2", "x\n" + statement + "\n")
    message = tree.error("t.j2")
    assert "OUTSIDE-CONTENT" not in message and "root:" not in message
    assert re.match(r"^t\.j2:2: .*(outside the config repository|not a name inside)", message), (
        message
    )


def test_the_named_template_cannot_be_a_link_out_of_the_tree(tree: Tree) -> None:
    (tree.config / "t.j2").symlink_to("/etc/passwd")
    assert tree.error("t.j2") == "'t.j2' points outside the config repository"
    assert tree.error("../x.j2") == "'../x.j2' points outside the config repository"
    expected = "expected a path relative to the manifest, found '/etc/passwd'"
    assert tree.error("/etc/passwd") == expected
    assert tree.error("missing.j2") == "'missing.j2' not found"


def test_a_link_inside_the_tree_is_followed(tree: Tree) -> None:
    tree.write("real/part.j2", "part {{ x }}")
    (tree.config / "alias.j2").symlink_to("real/part.j2")
    tree.write("t.j2", "{% include 'alias.j2' %}")
    assert tree.render("t.j2", x=1) == "part 1"
    assert tree.render("alias.j2", x=2) == "part 2"


def test_a_fifo_or_directory_is_refused_without_hanging(tree: Tree) -> None:
    os.mkfifo(tree.config / "fifo.j2")
    (tree.config / "dir.j2").mkdir()
    tree.write("t.j2", "{% include 'fifo.j2' %}")
    assert tree.error("t.j2") == "t.j2:1: 'fifo.j2' is not a regular file"
    tree.write("t.j2", "{% include 'dir.j2' %}")
    assert tree.error("t.j2") == "t.j2:1: 'dir.j2' is not a regular file"


# --- limits ---------------------------------------------------------------------


def test_output_over_the_limit_is_stopped_early(tree: Tree) -> None:
    tree.write("t.j2", "head\n{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}\n")
    started = time.monotonic()
    message = tree.error("t.j2")
    assert message == "t.j2:2: the output is over the limit of 8388608 bytes"
    assert time.monotonic() - started < 2.0  # stopped at 8 MiB, not after 100 MB
    small = TemplateLimits(output_bytes=100)
    tree.write("t.j2", "{{ 'x' * 100 }}")
    assert tree.render("t.j2", small) == "x" * 100
    tree.write("t.j2", "{{ 'x' * 100 }}\n")
    assert "output is over the limit of 100 bytes" in tree.error("t.j2", small)
    tree.write("t.j2", "{{ 'é' * 60 }}")  # 120 bytes of UTF-8
    assert "output is over the limit of 100 bytes" in tree.error("t.j2", small)


@pytest.mark.parametrize(
    "body",
    [
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% set c = b %}"
        "{% endfor %}{% endfor %}",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% if b is odd %}{% endif %}"
        "{% endfor %}{% endfor %}",
        "{% macro m(n) %}{% for i in range(10) %}{{ m(n + 1) if n < 40 }}{% endfor %}"
        "{% endmacro %}{{ m(0) }}",
    ],
    ids=["empty nested loop", "assignments only", "tests only", "branching macro"],
)
def test_a_render_over_its_time_is_stopped(tree: Tree, body: str) -> None:
    tree.write("t.j2", "x\n" + body + "\n")
    started = time.monotonic()
    message = tree.error("t.j2", TemplateLimits(seconds=0.5))
    took = time.monotonic() - started
    assert re.match(r"^t\.j2:2: rendering took longer than the limit of 0\.5 s$", message), message
    assert took < 2.0
    assert not [t for t in threading.enumerate() if t.name == "template-render"]


def test_the_default_time_limit_is_five_seconds(tree: Tree) -> None:
    body = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    tree.write("t.j2", body)
    started = time.monotonic()
    assert tree.error("t.j2") == "t.j2:1: rendering took longer than the limit of 5 s"
    assert 5.0 <= time.monotonic() - started < 7.0


def test_recursion_is_an_error_not_a_crash(tree: Tree) -> None:
    tree.write("t.j2", "a\n{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}\n")
    assert tree.error("t.j2") == "t.j2:2: calls nested deeper than the limit of 100"
    tree.write(
        "t.j2", "{% macro m(n) %}{{ m(n + 1) if n < 5 else 'done' }}{% endmacro %}{{ m(0) }}"
    )
    assert tree.render("t.j2", TemplateLimits(depth=6)) == "done"
    assert "nested deeper than the limit of 5" in tree.error("t.j2", TemplateLimits(depth=5))
    tree.write("self.j2", "{% include 'self.j2' %}")
    assert tree.error("self.j2") == "self.j2:1: nested too deeply (RecursionError)"
    tree.write("a.j2", "{% extends 'b.j2' %}")
    tree.write("b.j2", "{% extends 'a.j2' %}")
    assert "nested too deeply" in tree.error("a.j2")


def test_template_files_over_the_size_limit_are_refused(tree: Tree) -> None:
    limits = TemplateLimits(template_bytes=1000)
    tree.write("big.j2", "x" * 1001)
    tree.write("ok.j2", "x" * 1000)
    assert tree.render("ok.j2", limits) == "x" * 1000
    assert (
        tree.error("big.j2", limits)
        == "big.j2: big.j2 is over the template size limit of 1000 bytes"
    )
    tree.write("t.j2", "a\n{% include 'big.j2' %}")
    assert (
        tree.error("t.j2", limits) == "t.j2:2: big.j2 is over the template size limit of 1000 bytes"
    )
    tree.write("huge.j2", "x" * (1024 * 1024 + 1))  # the default: 1 MiB
    assert "over the template size limit of 1048576 bytes" in tree.error("huge.j2")


@pytest.mark.parametrize(
    "expression",
    [
        "'x' * 100000000",
        "['x'] * 10000000",
        "('x' * 8000000) ~ ('y' * 8000000)",
        "('x' * 8000000) + ('y' * 8000000)",
        "('x' * 1000000)|replace('', 'yyyyyyyyyy')",
        "('x' * 1000000).replace('x', 'yyyyyyyyyy')",
        "('x\\n' * 1000000)|indent(100)",
        "('\\t' * 1000000).expandtabs(100)",
        "'x'|center(100000000)",
        "'x'.ljust(100000000)",
        "'{0:>100000000}'.format(1)",
        "('{0:>8000000}' * 10).format(1)",
        "('%s' * 1000)|format(*(['x' * 100000] * 1000))",
        "'%100000000d' % 1",
        "(['x' * 1000000] * 100)|join",
        "''.join(['x' * 1000000] * 100)",
        "('x' * 8000000)|list",
        "2 ** 100000",
        "(2 ** 60000) * (2 ** 60000)",
    ],
)
def test_no_single_value_grows_past_the_output_limit(tree: Tree, expression: str) -> None:
    tree.write("t.j2", "{{ (" + expression + ")|length }}")
    started = time.monotonic()
    message = tree.error("t.j2")
    assert re.match(r"^t\.j2:1: (a value|a number|an integer) .* over the limit", message), message
    assert time.monotonic() - started < 2.0


def test_values_kept_alive_are_bounded_all_together(tree: Tree) -> None:
    tree.write(
        "t.j2",
        "{% set ns = namespace(keep=[]) %}{% for i in range(1000) %}"
        "{% set ns.keep = [('x' * 1000000) ~ i, ns.keep] %}{% endfor %}done",
    )
    message = tree.error("t.j2")
    assert (
        message == "t.j2:1: the template computed more than the limit of 67108864 bytes of values"
    )


# --- errors, secrets ------------------------------------------------------------

LEAKS: dict[str, str] = {
    "as a key": "{{ {}[s] }}",
    "reversed": "{{ {}[s|reverse] }}",
    "upper": "{{ {}[s|upper] }}",
    "lower": "{{ {}[s|lower] }}",
    "title": "{{ {}[s|title] }}",
    "capitalize": "{{ {}[s|capitalize] }}",
    "swapcase": "{{ {}[s.swapcase()] }}",
    "slice": "{{ {}[s[2:14]] }}",
    "step slice": "{{ {}[s[::-1]] }}",
    "join": "{{ {}[[s, s]|join] }}",
    "list then join": "{{ {}[s|list|join] }}",
    "format filter": "{{ {}['<%s>'|format(s)] }}",
    "percent": "{{ {}['<%s>' % s] }}",
    "str.format": "{{ {}['<{}>'.format(s)] }}",
    "format string from it": "{{ ('{' ~ s ~ '}').format() }}",
    "concatenated": "{{ {}['x' ~ s ~ 'y'] }}",
    "plus": "{{ {}[s + 'y'] }}",
    "tojson": "{{ {}[s|tojson] }}",
    "urlencode": "{{ {}[s|urlencode] }}",
    "center": "{{ {}[s|center(60)] }}",
    "int default": "{{ {}[s|int(s|upper)] }}",
    "include by name": "{% include s %}",
    "include derived name": "{% include (s|reverse) ~ '.j2' %}",
    "import by name": "{% import s|upper as x %}",
    "extends by name": "{% extends s[1:] %}",
    "undefined attribute named by it": "{{ x|attr(s) }}",
    "subscript of itself": "{{ s[s] }}",
    "attribute of a dict": "{{ {'a': 1}[s|lower] }}",
    "nested var": "{{ {}[db.password|reverse] }}",
    "in a list var": "{{ {}[keys[0]|upper] }}",
    "in a loop": "{% for c in [s] %}{{ {}[c|title] }}{% endfor %}",
    "through a macro": "{% macro m(v) %}{{ {}[v|reverse] }}{% endmacro %}{{ m(s) }}",
    "set block": "{% set v %}<{{ s }}>{% endset %}{{ {}[v] }}",
    "filter block": "{% filter upper %}{{ {}[s] }}{% endfilter %}",
    "replace": "{{ {}[s|replace('', '-')|replace('-', '')] }}",
    "wordwrap": "{{ {}[s|wordwrap(5)] }}",
    "unsafe attribute of it": "{{ s.__class__ }}",
    "sum": "{{ [s, 1]|sum }}",
}
"""A secret `s` (also `db.password`, `keys[0]`) carried into an error message by
a transformation: every one used to appear in the error text."""

SECRET = "k7Qm2Wp9Xv4Rt8Zs3Ny6Lh5Gj1"
"""Letters outside a-f alternating with digits: no 4 characters of it, or of its
reverse, occur by chance in hex digests, words or numbers of an output."""


def fragments(secret: str, size: int = 4) -> set[str]:
    """Every piece of `size`+ characters of the secret and of its reverse, case-folded
    (pieces of `size` suffice: a longer one contains one)."""
    found = set()
    for text in (secret, secret[::-1]):
        folded = text.casefold()
        found.update(folded[i : i + size] for i in range(len(folded) - size + 1))
    return found


def leaked(secret: str, text: str) -> list[str]:
    """The fragments of `secret` that appear in `text`."""
    folded = text.casefold()
    return sorted(f for f in fragments(secret) if f in folded)


def secret_ctx(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> tuple[PrepareContext, object]:
    monkeypatch.setenv("TEMPLATE_TEST_SECRET", SECRET)
    ctx = tree.ctx()
    ref = {"valueFrom": {"env": "TEMPLATE_TEST_SECRET"}}
    variables = resolve_variables(
        ctx, {"s": ref, "db": {"password": ref}, "keys": [ref], "x": "plain"}, ("vars",)
    )
    return ctx, variables


@pytest.mark.parametrize("template", LEAKS.values(), ids=list(LEAKS))
def test_an_error_with_a_secret_in_scope_shows_no_part_of_it(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    ctx, variables = secret_ctx(tree, monkeypatch)
    tree.write("t.j2", "first line\n" + template + "\n")
    with pytest.raises(SpecError) as info:
        render(ctx, "t.j2", variables)  # type: ignore[arg-type]
    message = str(info.value)
    assert leaked(SECRET, message) == [], message
    assert re.fullmatch(rf"t\.j2:2: [A-Z][A-Za-z]+ {re.escape(WITHHELD)}", message), message


def test_the_same_errors_without_a_secret_keep_their_message(tree: Tree) -> None:
    tree.write("t.j2", "a\n{{ {}[s|reverse] }}\n")
    assert tree.error("t.j2", s="plain") == "t.j2:2: 'dict object' has no attribute 'nialp'"
    tree.write("t.j2", "{% include s %}")
    assert tree.error("t.j2", s="nope.j2") == "t.j2:1: 'nope.j2' not found"
    tree.write("t.j2", "a\nb\n{{ missing }}")
    assert tree.error("t.j2") == "t.j2:3: 'missing' is undefined"
    tree.write("t.j2", "{% if x %}")
    assert re.match(r"^t\.j2:1: .*(endif|end of template)", tree.error("t.j2", x=1))


def test_an_error_in_an_included_template_names_that_template(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.write("inc.j2", "one\ntwo\n{{ {}[s|upper] }}\n")
    tree.write("t.j2", "{% include 'inc.j2' %}")
    assert tree.error("t.j2", s="abc") == "inc.j2:3: 'dict object' has no attribute 'ABC'"
    ctx, variables = secret_ctx(tree, monkeypatch)
    with pytest.raises(SpecError) as info:
        render(ctx, "t.j2", variables)  # type: ignore[arg-type]
    assert str(info.value) == f"inc.j2:3: UndefinedError {WITHHELD}"


def test_limit_errors_keep_their_fixed_text_with_a_secret_in_scope(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, variables = secret_ctx(tree, monkeypatch)
    tree.write("t.j2", "{{ s * 1000000 }}")
    with pytest.raises(SpecError) as info:
        render(ctx, "t.j2", variables)  # type: ignore[arg-type]
    assert (
        str(info.value)
        == "t.j2:1: a value the template computes is over the limit of 8388608 bytes"
    )


def test_output_made_from_a_secret_is_sensitive(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, variables = secret_ctx(tree, monkeypatch)
    tree.write("t.j2", "password={{ s }} {{ [x] }}")
    text = render(ctx, "t.j2", variables)  # type: ignore[arg-type]
    assert isinstance(text, Sensitive) and repr(text) == repr(SENSITIVE)
    assert str.__str__(text) == f"password={SECRET} ['plain']"


def test_a_spec_error_quoting_a_transformed_secret_is_withheld(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # any provider's SpecError passes through PrepareContext.mask in the loader
    ctx, _ = secret_ctx(tree, monkeypatch)
    assert ctx.mask(f"bad {SECRET}") == f"bad {SENSITIVE}"
    for derived in (SECRET[::-1], SECRET.upper(), SECRET[3:11], "-".join([SECRET[:6], "x"])):
        masked = ctx.mask(f"bad value {derived!r} in field")
        assert leaked(SECRET, masked) == [], masked
    assert ctx.mask("port 80 is taken") == "port 80 is taken"
