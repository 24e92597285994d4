"""What Jinja texts read from outside the row: the `var()` and `env_var()`
names they call, found in their syntax trees. Searching the text for
`var(` missed `var ('x')` and `{% set v = var %}{{ v('x') }}` (the text was
not rendered again when the var changed) and, for a template that read one
var, counted every var. A name the template computes, or `var` passed
around as a value, reads ANY: every var (every readable environment
variable) counts."""

from __future__ import annotations

from dataclasses import dataclass

ANY = None  # a computed name: any of them may be read


@dataclass(frozen=True)
class Reads:
    vars: frozenset[str] | None  # None: ANY
    env_vars: frozenset[str] | None


def reads_of(*texts: str) -> Reads:
    """The var() and env_var() names `texts` read (ANY for both when one does
    not parse: validate reports the syntax error; until then nothing is
    missed)."""
    import jinja2
    from jinja2 import nodes

    from segtool.compile.jinja import default_env

    found: dict[str, set[str] | None] = {"var": set(), "env_var": set()}
    for text in texts:
        if "var" not in text:  # neither name appears: nothing to parse
            continue
        try:
            ast = default_env().parse(text)
        except jinja2.TemplateSyntaxError:
            return Reads(ANY, ANY)
        called: dict[str, int] = {"var": 0, "env_var": 0}
        for call in ast.find_all(nodes.Call):
            callee = call.node
            if not (isinstance(callee, nodes.Name) and callee.name in found):
                continue
            called[callee.name] += 1
            name = _constant_name(call)
            names = found[callee.name]
            if name is None:
                found[callee.name] = ANY
            elif names is not None:
                names.add(name)
        for ref in ast.find_all(nodes.Name):
            # more uses of the name than calls of it: passed as a value (an alias)
            if ref.name in called and ref.ctx == "load":
                called[ref.name] -= 1
        for fn, left in called.items():
            if left < 0:
                found[fn] = ANY
    return Reads(*(None if v is None else frozenset(v) for v in found.values()))


def _constant_name(call) -> str | None:
    """The name a `var(...)`/`env_var(...)` call reads, when written as a
    constant (positionally or as `name=`); None when computed."""
    from jinja2 import nodes

    arg = (
        call.args[0] if call.args else next((k.value for k in call.kwargs if k.key == "name"), None)
    )
    if call.dyn_args is not None or call.dyn_kwargs is not None:
        return None
    if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
        return arg.value
    return None
