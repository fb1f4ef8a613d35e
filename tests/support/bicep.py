"""A small evaluator for the Bicep this repository writes: enough to "deploy" infra/ on paper.

No bicep CLI is available on the CI machines, so tests expand the templates themselves: params
(from a parameters file), vars, `resource`/`module` declarations with `if (...)` conditions and
`[for ...]` loops, nested modules with their params. Values the deployment would only know in
Azure (`resourceGroup().location`, `x.properties...`, `guid(...)`) become `Opaque`; a condition or
loop that depends on one is an error, so a test never passes on something it could not decide.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class BicepError(Exception):
    """Raised when the text is outside the subset understood here, or a condition is undecidable."""


@dataclass(frozen=True)
class Opaque:
    text: str


@dataclass(frozen=True)
class Instance:
    """One deployed resource (after conditions and loops)."""

    file: str
    symbol: str
    type: str
    name: object
    body: dict
    index: int | None = None
    scope: str = "main"  # which deployment: the template, or a module instance like dataAccountsPrivate[1]
    parent: tuple | None = None  # (scope, symbol, index) of the parent resource

    @property
    def key(self) -> tuple:
        return self.scope, self.symbol, self.index

    @property
    def id(self) -> str:
        return f"{self.type}/{self.name}"


# -- tokens --------------------------------------------------------------------------------
_PUNCT = ["=>", "==", "!=", "&&", "||", "{", "}", "[", "]", "(", ")", ":", ",", ".", "?", "!", "=", "@"]


def _tokens(text: str) -> list[tuple[str, object]]:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif c == "\n":
            out.append(("nl", None))
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "'":
            parts, buf, i = [], "", i + 1
            while True:
                if i >= n:
                    raise BicepError("unterminated string")
                if text[i] == "\\":
                    buf += {"n": "\n", "t": "\t"}.get(text[i + 1], text[i + 1])
                    i += 2
                elif text[i] == "'":
                    i += 1
                    break
                elif text.startswith("${", i):
                    depth, j = 1, i + 2
                    while depth:
                        depth += {"{": 1, "}": -1}.get(text[j], 0)
                        j += 1
                    parts.append(buf)
                    parts.append(_Parser(_tokens(text[i + 2:j - 1])).expression())
                    buf, i = "", j
                else:
                    buf += text[i]
                    i += 1
            parts.append(buf)
            out.append(("str", parts))
        elif c.isdigit():
            m = re.match(r"\d+", text[i:])
            out.append(("num", int(m.group())))
            i += len(m.group())
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            out.append(("id", m.group()))
            i += len(m.group())
        else:
            for p in _PUNCT:
                if text.startswith(p, i):
                    out.append(("p", p))
                    i += len(p)
                    break
            else:
                raise BicepError(f"unexpected character {c!r}")
    return out


# -- parser (AST as tuples) ----------------------------------------------------------------
class _Parser:
    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else ("eof", None)

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def skip_nl(self):
        while self.peek()[0] == "nl":
            self.i += 1

    def expect(self, kind, value=None):
        tok = self.next()
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise BicepError(f"expected {value or kind}, got {tok}")
        return tok

    def at(self, value):
        return self.peek() == ("p", value)

    def expression(self):
        # lambda: x => e   or   (a, b) => e
        if self.peek()[0] == "id" and self.peek(1) == ("p", "=>"):
            name = self.next()[1]
            self.next()
            return ("lambda", [name], self.expression())
        cond = self.binary(0)
        if self.at("?"):
            self.next()
            self.skip_nl()
            a = self.expression()
            self.skip_nl()
            self.expect("p", ":")
            self.skip_nl()
            return ("?", cond, a, self.expression())
        return cond

    _LEVELS = [("||",), ("&&",), ("==", "!=")]

    def binary(self, level):
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "p" and self.peek()[1] in self._LEVELS[level]:
            op = self.next()[1]
            left = (op, left, self.binary(level + 1))
        return left

    def unary(self):
        if self.at("!"):
            self.next()
            return ("!", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            if self.at("."):
                self.next()
                node = ("get", node, self.expect("id")[1])
            elif self.at("["):
                self.next()
                index = self.expression()
                self.expect("p", "]")
                node = ("index", node, index)
            elif self.at("(") and node[0] == "name":
                self.next()
                args = []
                self.skip_nl()
                while not self.at(")"):
                    args.append(self.expression())
                    self.skip_nl()
                    if self.at(","):
                        self.next()
                        self.skip_nl()
                self.next()
                node = ("call", node[1], args)
            else:
                return node

    def primary(self):
        kind, value = self.next()
        if kind == "str":
            return ("str", value)
        if kind == "num":
            return ("lit", value)
        if kind == "id":
            if value in ("true", "false", "null"):
                return ("lit", {"true": True, "false": False, "null": None}[value])
            return ("name", value)
        if (kind, value) == ("p", "("):
            if self.peek()[0] == "id" and self.peek(1) == ("p", ",") or \
                    (self.peek()[0] == "id" and self.peek(1) == ("p", ")") and self.peek(2) == ("p", "=>")):
                names = [self.next()[1]]
                while self.at(","):
                    self.next()
                    names.append(self.expect("id")[1])
                self.expect("p", ")")
                self.expect("p", "=>")
                return ("lambda", names, self.expression())
            inner = self.expression()
            self.expect("p", ")")
            return inner
        if (kind, value) == ("p", "{"):
            items = []
            self.skip_nl()
            while not self.at("}"):
                key = self.next()
                key = key[1] if key[0] == "id" else "".join(key[1])
                self.expect("p", ":")
                items.append((key, self.expression()))
                self.skip_nl()
                if self.at(","):
                    self.next()
                    self.skip_nl()
            self.next()
            return ("obj", items)
        if (kind, value) == ("p", "["):
            self.skip_nl()
            if self.peek() == ("id", "for"):
                return self.loop()
            items = []
            while not self.at("]"):
                items.append(self.expression())
                self.skip_nl()
                if self.at(","):
                    self.next()
                    self.skip_nl()
            self.next()
            return ("arr", items)
        if (kind, value) == ("id", "if"):
            raise BicepError("'if' outside a declaration")
        raise BicepError(f"unexpected token {(kind, value)}")

    def loop(self):
        self.expect("id", "for")
        if self.at("("):
            self.next()
            item = self.expect("id")[1]
            self.expect("p", ",")
            index = self.expect("id")[1]
            self.expect("p", ")")
        else:
            item, index = self.expect("id")[1], None
        self.expect("id", "in")
        collection = self.expression()
        self.expect("p", ":")
        self.skip_nl()
        body = self.conditional()
        self.skip_nl()
        self.expect("p", "]")
        return ("for", item, index, collection, body)

    def conditional(self):
        if self.peek() == ("id", "if"):
            self.next()
            self.expect("p", "(")
            cond = self.expression()
            self.expect("p", ")")
            self.skip_nl()
            return ("if", cond, self.expression())
        return self.expression()


@dataclass
class _Decl:
    kind: str  # resource or module
    symbol: str
    target: str  # "type@version" or module path
    existing: bool
    value: tuple


@dataclass
class Template:
    path: Path
    params: dict = field(default_factory=dict)  # name -> default AST or None
    vars: dict = field(default_factory=dict)
    decls: dict = field(default_factory=dict)


def parse_template(path: Path) -> Template:
    p = _Parser(_tokens(path.read_text(encoding="utf-8")))
    tpl = Template(path)
    while True:
        p.skip_nl()
        kind, word = p.peek()
        if kind == "eof":
            return tpl
        if (kind, word) == ("p", "@"):
            p.next()
            p.expression()  # a decorator
            continue
        p.next()
        if word == "param":
            name = p.expect("id")[1]
            p.expect("id")  # type
            tpl.params[name] = None
            if p.at("="):
                p.next()
                tpl.params[name] = p.expression()
        elif word == "var":
            name = p.expect("id")[1]
            p.expect("p", "=")
            p.skip_nl()
            tpl.vars[name] = p.expression()
        elif word in ("resource", "module"):
            symbol = p.expect("id")[1]
            target = "".join(p.expect("str")[1])
            existing = p.peek() == ("id", "existing")
            if existing:
                p.next()
            p.expect("p", "=")
            p.skip_nl()
            tpl.decls[symbol] = _Decl(word, symbol, target, existing, p.conditional())
        elif word == "output":
            p.expect("id")
            p.expect("id")
            p.expect("p", "=")
            p.expression()
        else:
            raise BicepError(f"{path.name}: unexpected statement {word!r}")


# -- evaluation ----------------------------------------------------------------------------
def _opaque(*values) -> Opaque | None:
    for v in values:
        if isinstance(v, Opaque):
            return v
    return None


_BUILTINS = {
    "union": lambda *a: _opaque(*a) or (dict(__import__("functools").reduce(lambda x, y: {**x, **y}, a))
                                         if isinstance(a[0], dict) else list(dict.fromkeys(sum(a, [])))),
    "concat": lambda *a: _opaque(*a) or sum(a, []),
    "flatten": lambda a: _opaque(a, *a) or sum(a, []),
    "items": lambda o: _opaque(o) or [{"key": k, "value": v} for k, v in o.items()],
    "take": lambda s, n: _opaque(s, n) or s[:n],
    "toLower": lambda s: _opaque(s) or s.lower(),
    "replace": lambda s, a, b: _opaque(s, a, b) or s.replace(a, b),
    "string": lambda v: _opaque(v) or (v if isinstance(v, str) else json.dumps(v)),
    "environment": lambda: {"suffixes": {"storage": "core.windows.net"}},
    # A file beside the template, read at build time (the tests read and check the file themselves).
    "loadTextContent": lambda name: _opaque(name) or Opaque(f"loadTextContent({name})"),
    "resourceId": lambda t, *names: _opaque(t, *names) or f"{t}/{'/'.join(names)}",
    "subscriptionResourceId": lambda t, *names: _opaque(t, *names) or f"{t}/{'/'.join(names)}",
}


class Deployment:
    """Expand a template with parameter values into the resources it would deploy."""

    def __init__(self, path: Path, params: dict) -> None:
        self.instances: list[Instance] = []
        self.existing: list[Instance] = []  # `existing` resources referenced (scopes of role assignments)
        self._deploy(parse_template(path), params, "main")

    def of_type(self, type_name: str) -> list[Instance]:
        return [i for i in self.instances if i.type == type_name]

    def _deploy(self, tpl: Template, given: dict, scope_name: str) -> None:
        scope = _Scope(self, tpl, given)
        for decl in tpl.decls.values():
            for index, bindings in scope.expansions(decl):
                node = bindings.pop("__body__", decl.value)
                body = scope.eval(node[2] if node[0] == "if" else node, bindings)
                if decl.kind == "module":
                    self._deploy(parse_template(tpl.path.parent / decl.target), body.get("params", {}),
                                 decl.symbol if index is None else f"{decl.symbol}[{index}]")
                    continue
                parent = body.pop("parent", None)
                if parent is not None:
                    parent = (scope_name, parent[1].symbol, parent[2])
                (self.existing if decl.existing else self.instances).append(Instance(tpl.path.name, decl.symbol, decl.target.split("@")[0],
                                               body.get("name"), body, index, scope_name, parent))


class _Scope:
    def __init__(self, deployment, tpl: Template, given: dict) -> None:
        self.tpl, self.deployment = tpl, deployment
        self.params = {}
        for name, default in tpl.params.items():
            if name in given:
                self.params[name] = given[name]
            elif default is not None:
                self.params[name] = self.eval(default, {})
            else:
                raise BicepError(f"{tpl.path.name}: parameter {name} has no value")
        unknown = set(given) - set(tpl.params)
        if unknown:
            raise BicepError(f"{tpl.path.name}: no such parameter(s) {sorted(unknown)}")
        self._vars = {}

    def expansions(self, decl: _Decl):
        """(index, bindings) for every instance a declaration deploys, conditions applied."""
        value = decl.value
        if value[0] == "for":
            _, item, index, coll, body = value
            collection = self.eval(coll, {})
            if not isinstance(collection, list):
                raise BicepError(f"{decl.symbol}: loop over an undecidable collection ({collection})")
            for i, element in enumerate(collection):
                bindings = {item: element, **({index: i} if index else {})}
                if body[0] != "if" or self.decide(body[1], bindings, decl.symbol):
                    yield i, {**bindings, "__body__": body}
        elif value[0] != "if" or self.decide(value[1], {}, decl.symbol):
            yield None, {}

    def decide(self, cond, bindings, where) -> bool:
        value = self.eval(cond, bindings)
        if not isinstance(value, bool):
            raise BicepError(f"{where}: condition is not decidable here ({value})")
        return value

    def instance_name(self, decl: _Decl, index):
        if decl.value[0] == "for":
            _, item, idx, coll, body = decl.value
            collection = self.eval(coll, {})
            bindings = {item: collection[index], **({idx: index} if idx else {})}
            body = body[2] if body[0] == "if" else body
        else:
            bindings, body = {}, decl.value[2] if decl.value[0] == "if" else decl.value
        names = dict(body[1])
        return self.eval(names["name"], bindings)

    def eval(self, node, env):
        op = node[0]
        if op == "lit":
            return node[1]
        if op == "str":
            parts = [p if isinstance(p, str) else self.eval(p, env) for p in node[1]]
            return _opaque(*parts) or "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)
        if op == "name":
            name = node[1]
            if name in env:
                return env[name]
            if name in self.params:
                return self.params[name]
            if name in self.tpl.vars:
                if name not in self._vars:
                    self._vars[name] = self.eval(self.tpl.vars[name], {})
                return self._vars[name]
            if name in self.tpl.decls:
                return ("decl", self.tpl.decls[name], None)
            return Opaque(name)
        if op == "obj":
            return {k: self.eval(v, env) for k, v in node[1]}
        if op == "arr":
            return [self.eval(v, env) for v in node[1]]
        if op == "for":
            _, item, index, coll, body = node
            collection = self.eval(coll, env)
            if not isinstance(collection, list):
                return Opaque("for")
            return [self.eval(body, {**env, item: e, **({index: i} if index else {})}) for i, e in enumerate(collection)]
        if op == "?":
            cond = self.eval(node[1], env)
            if isinstance(cond, Opaque):
                return cond
            return self.eval(node[2] if cond else node[3], env)
        if op == "!":
            v = self.eval(node[1], env)
            return _opaque(v) or (not v)
        if op in ("==", "!="):
            a, b = self.eval(node[1], env), self.eval(node[2], env)
            return _opaque(a, b) or ((a == b) == (op == "=="))
        if op in ("&&", "||"):
            a = self.eval(node[1], env)
            if isinstance(a, Opaque):
                return a
            if (op == "&&" and not a) or (op == "||" and a):
                return a
            return self.eval(node[2], env)
        if op == "lambda":
            return ("lambda", node[1], node[2], env)
        if op == "call":
            args = [self.eval(a, env) for a in node[2]]
            if node[1] == "map":
                coll, fn = args
                if isinstance(coll, Opaque):
                    return coll
                return [self.eval(fn[2], {**fn[3], fn[1][0]: e}) for e in coll]
            if node[1] in _BUILTINS:
                return _BUILTINS[node[1]](*args)
            return Opaque(f"{node[1]}()")
        if op == "index":
            base, index = self.eval(node[1], env), self.eval(node[2], env)
            if isinstance(base, tuple) and base[0] == "decl":
                return ("decl", base[1], index)
            if isinstance(base, Opaque) or isinstance(index, Opaque):
                return _opaque(base, index)
            return base[index]
        if op == "get":
            base = self.eval(node[1], env)
            if isinstance(base, tuple) and base[0] == "decl":
                decl, index = base[1], base[2]
                if decl.kind == "resource" and node[2] in ("id", "name"):
                    name = self.instance_name(decl, index)
                    return name if node[2] == "name" else _opaque(name) or f"{decl.target.split('@')[0]}/{name}"
                return Opaque(f"{decl.symbol}.{node[2]}")
            if isinstance(base, Opaque):
                return Opaque(f"{base.text}.{node[2]}")
            return base.get(node[2]) if isinstance(base, dict) else Opaque(node[2])
        raise BicepError(f"cannot evaluate {op}")
