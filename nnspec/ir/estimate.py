"""The least number of layers a block, fn or repeat will build, read from the spec's text
before building it, so that one past the layer budget is refused at once (E401) rather
than after 100,000 layers were built (blocks that each apply the one below twice reach
2^30 layers in thirty lines).

A lower bound: only what is sure to be built counts. An op applied to a tensor is one
layer, a block applied to a tensor its own least count, `repeat(n, l)` n times l's, `a + b`
of tensors one; anything that depends on a value the text does not fix (a parameter given
a tensor or a layer, a condition on it) counts nothing. So it never refuses a model that
would fit. Each (definition, arguments) is counted once.
"""

from __future__ import annotations

from nnspec.diagnostics import DiagnosticError
from nnspec.ir import ops
from nnspec.ir.arithmetic import combine, is_number
from nnspec.ir.values import POISON, Layer, Tensor
from nnspec.syntax import ast


class _Unknown:
    def __repr__(self):
        return "<unknown>"


UNKNOWN = _Unknown()  # a value the text does not fix


class LayerFloor:
    """Least layer counts over a program's definitions (`defs`), its constants, and the
    names of recursive definitions, which count nothing (E155 reports them)."""

    def __init__(self, defs: dict[str, ast.Definition], consts: dict, recursive):
        self.defs, self.consts, self.recursive = defs, consts, set(recursive)
        self.memo: dict[tuple, int] = {}
        self.counting: set[str] = set()  # definitions being counted: no loops

    def of_layer(self, layer: Layer) -> int:
        """Applying the evaluated `layer` once."""
        if layer.kind == "op":
            return 1
        if layer.kind == "seq":
            return sum(self.of_layer(part) for part in layer.parts)
        if layer.kind == "repeat":
            return layer.count * self.of_layer(layer.parts[0])
        definition = self.defs.get(layer.name)
        if definition is None:
            return 0
        values = [a for a in layer.args if not isinstance(a, Tensor)]
        return self.of_definition(definition, self.bind(definition, values,
                                                        {k: v for k, v, _ in layer.kwargs}))

    def of_definition(self, definition: ast.Definition, params: dict) -> int:
        """Running the body of `definition` with its parameters bound to `params`."""
        env = {name: _plain(value) for name, value in params.items()}
        key = (definition.name, *env.items())
        try:
            hash(key)
        except TypeError:  # a list argument
            key = (definition.name, repr(env))
        if key not in self.memo:
            if definition.name in self.recursive or definition.name in self.counting:
                return 0
            self.counting.add(definition.name)
            try:
                self.memo[key] = _Body(self, definition, env).count()
            finally:
                self.counting.discard(definition.name)
        return self.memo[key]

    def bind(self, definition: ast.Definition, values: list, keywords: dict) -> dict:
        """Parameters from a call's values, as `bind_params` would, UNKNOWN where unsure."""
        env: dict = {}
        for i, param in enumerate(definition.params):
            if i < len(values):
                env[param.name] = _plain(values[i])
            elif param.name in keywords:
                env[param.name] = _plain(keywords[param.name])
            elif param.default is not None:
                env[param.name] = self.value(param.default, env)
            else:
                env[param.name] = UNKNOWN
        return env

    def value(self, expr, env: dict):
        """A plain value the text fixes (numbers, strings, lists, arithmetic), or UNKNOWN."""
        if isinstance(expr, (ast.Number, ast.String, ast.Constant)):
            return expr.value
        if isinstance(expr, ast.Name):
            if expr.id in env:
                return env[expr.id]
            return _plain(self.consts.get(expr.id, UNKNOWN))
        if isinstance(expr, ast.BinOp) and expr.op not in ("and", "or"):
            chain = ast.operator_chain(expr)
            value = self.value(chain[0].left, env)
            for link in chain:
                right = self.value(link.right, env)
                if value is UNKNOWN or right is UNKNOWN:
                    return UNKNOWN
                try:
                    value = combine(link.op, value, right, link.span)
                except DiagnosticError:
                    return UNKNOWN
            return value
        if isinstance(expr, ast.Unary) and expr.op == "-":
            operand = self.value(expr.operand, env)
            return -operand if is_number(operand) else UNKNOWN
        if isinstance(expr, ast.Conditional):
            cond = self.value(expr.cond, env)
            if isinstance(cond, bool):
                return self.value(expr.then if cond else expr.otherwise, env)
        return UNKNOWN


def _plain(value):
    """Tensors, layers and failed values fix no number."""
    if isinstance(value, (Tensor, Layer)) or value is POISON:
        return UNKNOWN
    return value


class _Body:
    """One body counted: which names surely hold tensors, which values are fixed."""

    def __init__(self, floor: LayerFloor, definition: ast.Definition, env: dict):
        self.floor, self.definition, self.env = floor, definition, dict(env)
        self.tensors = {s.name for s in definition.body if isinstance(s, ast.Input)}
        self.local = set(env)  # names that hide constants, definitions and ops

    def count(self) -> int:
        total = 0
        for stmt in self.definition.body:
            if isinstance(stmt, ast.Input):
                continue
            value = getattr(stmt, "value", None)
            if value is None:
                continue
            layers, is_tensor = self.expr(value)
            total += layers
            if isinstance(stmt, ast.Assign):
                self.local.add(stmt.name)
                self.env[stmt.name] = self.floor.value(value, self.env)
                (self.tensors.add if is_tensor else self.tensors.discard)(stmt.name)
        return total

    def expr(self, expr) -> tuple[int, bool]:
        """Layers built evaluating `expr`, and whether it surely gives a tensor."""
        if isinstance(expr, ast.Name):
            return 0, expr.id in self.tensors
        if isinstance(expr, ast.Pipeline):
            layers, is_tensor = self.expr(expr.head)
            if not is_tensor:  # a composition of layers, built where it is applied
                return layers, False
            return layers + sum(self.stage(s.layer) for s in expr.stages), True
        if isinstance(expr, ast.BinOp) and expr.op not in ("and", "or"):
            chain = ast.operator_chain(expr)
            layers, tensor = self.expr(chain[0].left)
            for link in chain:
                right, right_tensor = self.expr(link.right)
                tensor = tensor or right_tensor
                layers += right + tensor
            return layers, tensor
        if isinstance(expr, ast.BinOp):
            left, _ = self.expr(expr.left)
            return left + self.expr(expr.right)[0], False
        if isinstance(expr, ast.Unary):
            layers, is_tensor = self.expr(expr.operand)
            tensor = is_tensor and expr.op == "-"
            return layers + tensor, tensor
        if isinstance(expr, ast.Conditional):
            return self.branch(expr, self.expr)
        if isinstance(expr, ast.Call):
            args = [self.expr(a) for a in expr.args]
            layers = sum(n for n, _ in args) + sum(self.expr(k.value)[0] for k in expr.kwargs)
            if expr.func != "repeat" and args and args[0][1]:  # applied to a tensor
                layers += self.stage(expr)
            return layers, False
        if isinstance(expr, ast.ListExpr):
            return sum(self.expr(item)[0] for item in expr.items), False
        return 0, False

    def branch(self, expr: ast.Conditional, count):
        cond = self.floor.value(expr.cond, self.env)
        if isinstance(cond, bool):
            return count(expr.then if cond else expr.otherwise)
        then, otherwise = count(expr.then), count(expr.otherwise)
        if isinstance(then, tuple):
            return min(then[0], otherwise[0]), then[1] and otherwise[1]
        return min(then, otherwise)

    def stage(self, layer) -> int:
        """Layers built applying the layer expression `layer` once."""
        if isinstance(layer, ast.Conditional):
            return self.branch(layer, self.stage)
        if isinstance(layer, ast.Pipeline):  # `-> (a -> b)`
            return self.stage(layer.head) + sum(self.stage(s.layer) for s in layer.stages)
        if isinstance(layer, ast.Name):
            return self.named(layer.id, [], {})
        if not isinstance(layer, ast.Call):
            return 0
        if layer.func == "repeat":
            if len(layer.args) != 2:
                return 0
            count = self.floor.value(layer.args[0], self.env)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                return 0
            return count * self.stage(layer.args[1])
        args = list(layer.args)
        while args and self.expr(args[0])[1]:  # tensors first: not parameters
            args.pop(0)
        values = [self.floor.value(a, self.env) for a in args]
        if UNKNOWN in values:  # perhaps a tensor: where the others bind is unsure
            values = [UNKNOWN] * len(values)
        keywords = {k.name: self.floor.value(k.value, self.env) for k in layer.kwargs}
        return self.named(layer.func, values, keywords)

    def named(self, name: str, values: list, keywords: dict) -> int:
        if name in self.local or name in self.tensors or name in self.floor.consts:
            return 0
        definition = self.floor.defs.get(name)
        if definition is not None:
            if definition.kind == "model":
                return 0
            return self.floor.of_definition(definition,
                                            self.floor.bind(definition, values, keywords))
        return 1 if ops.lookup(name) is not None else 0
