"""A federated GraphQL endpoint (docs/graphql.md, contract §8): a route with `graphql`
answers GraphQL over HTTP itself, planning each operation over a Federation v2
supergraph and fetching from its subgraphs.

- supergraph.py reads the supergraph SDL (who resolves what; the API schema);
- planner.py turns an operation into fetches (cached per document and operation name);
- executor.py runs them and shapes the response;
- policy.py is the route's handler: GraphQL over HTTP, limits, persisted queries,
  introspection, metrics; schema.py its config.
"""
from __future__ import annotations

from ...config.schema import Field
from ...registry import PolicyKind
from .policy import GraphqlPolicy
from .schema import Graphql, check_route


def _build(config, context, services):
    policy = GraphqlPolicy(config, context)
    services.shared["graphql:" + context.route_name] = policy   # closed (its subgraph pools) with its config version
    return policy


KIND = PolicyKind(
    "graphql", phase=GraphqlPolicy.phase, key="graphql", outcome=GraphqlPolicy.outcome,
    build=lambda config, context, services: None if config is None else _build(config, context, services),
    check=check_route, own_upstream=False, log_fields=GraphqlPolicy.log_fields,
    # Its request is read, parsed and costed after auth and before the rate limits.
    new_phase=("operation", "auth"),
    request_values={"graphql_operation": ("key", "the GraphQL operation's name ((anonymous) for an unnamed one)"),
                    "graphql_cost": ("cost", "the GraphQL operation's estimated cost (docs/graphql.md)")},
    field=Field(Graphql, None, "{supergraph, subgraphs, introspection, limits, cost, persisted_queries}: a "
                               "federated GraphQL endpoint over a Federation v2 supergraph; see docs/graphql.md"))
