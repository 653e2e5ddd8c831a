"""One request and its response: the classes that make an exchange.

Layers, each a class in its own module, each deriving from the one before:

- `sink.ResponseSink`: what an upstream connection feeds (upstream/pool.py knows only this);
- `request.Request`: one request's fields and the policy API;
- `relay.Relay`: the response towards the client, through the connection's codec;
- `forwarding.Forwarding`: target, pool, attempts, retries, deadlines;
- `lifecycle.Exchange`: routing, the chain, the gateway's own endpoints.

Framing is not a layer but an object: a `codec.Codec` chosen once per client
connection (`http1.HTTP1`, or `subrequest.KEEP`, which frames nothing), and an
upstream codec per upstream connection (`http1.Http1Upstream`). server/ and
upstream/ both depend on this package; it imports neither server/ nor a policy.
"""
