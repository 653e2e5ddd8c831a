"""The estimated cost of a GraphQL operation (docs/graphql.md, "Cost"): what a rate limit
with `cost: graphql_cost` weighs a request by, and what `limits.max_cost` refuses.

Before anything is fetched, each field of the operation is counted once for every
object it will be asked of:

- a field that returns an object, interface or union weighs 1, a scalar or enum 0
  (as GitHub counts: the objects fetched, not their leaves); `cost.weights` sets any
  field's weight by `Type.field`;
- a field that returns a list multiplies everything selected under it by its size:
  its `first`, `last` or `limit` argument (a literal, a variable, or the argument's
  default in the schema), else `cost.default_list_size`;
- fragments count as their fields do; `@skip`/`@include` are not looked at (the
  estimate is an upper bound); an operation costs at least 1.
"""
from __future__ import annotations

from graphql import get_named_type, is_composite_type, is_list_type, is_non_null_type
from graphql.language import ast as gast

SIZE_ARGUMENTS = ("first", "last", "limit")


class CostModel:
    __slots__ = ("schema", "weights", "default_list_size")

    def __init__(self, schema, config):
        self.schema = schema
        self.weights = dict(config.weights)
        self.default_list_size = config.default_list_size

    def estimate(self, operation, fragments: dict, variables: dict) -> int:
        root = self.schema.get_root_type(operation.operation)
        if root is None:
            return 1
        return max(1, self._selection(operation.selection_set, root, fragments, variables, 1, ()))

    def _selection(self, selection_set, parent, fragments: dict, variables: dict, multiplier: int, seen: tuple) -> int:
        total = 0
        fields = getattr(parent, "fields", None) or {}
        for sel in selection_set.selections:
            if isinstance(sel, gast.FieldNode):
                field = fields.get(sel.name.value)
                if field is None:
                    continue   # __typename and the introspection fields cost nothing
                named = get_named_type(field.type)
                weight = self.weights.get(f"{parent.name}.{sel.name.value}")
                if weight is None:
                    weight = 1 if is_composite_type(named) else 0
                total += multiplier * weight
                if sel.selection_set is not None and is_composite_type(named):
                    total += self._selection(sel.selection_set, named, fragments, variables,
                                             multiplier * self._size(field, sel, variables), seen)
            elif isinstance(sel, gast.InlineFragmentNode):
                typed = self.schema.get_type(sel.type_condition.name.value) if sel.type_condition else parent
                total += self._selection(sel.selection_set, typed or parent, fragments, variables, multiplier, seen)
            else:
                name = sel.name.value
                fragment = fragments.get(name)
                if fragment is None or name in seen:
                    continue
                typed = self.schema.get_type(fragment.type_condition.name.value) or parent
                total += self._selection(fragment.selection_set, typed, fragments, variables, multiplier,
                                         seen + (name,))
        return total

    def _size(self, field, node, variables: dict) -> int:
        """How many items a field's list holds at most: 1 for a field that is not a list."""
        field_type = field.type
        if is_non_null_type(field_type):
            field_type = field_type.of_type
        if not is_list_type(field_type):
            return 1
        for argument in node.arguments or ():
            if argument.name.value in SIZE_ARGUMENTS:
                value = argument.value
                if isinstance(value, gast.IntValueNode):
                    return max(0, int(value.value))
                if isinstance(value, gast.VariableNode):
                    found = variables.get(value.name.value)
                    if isinstance(found, int) and not isinstance(found, bool):
                        return max(0, found)
        for name in SIZE_ARGUMENTS:
            argument = field.args.get(name)
            if argument is not None and isinstance(argument.default_value, int):
                return max(0, argument.default_value)
        return self.default_list_size
