"""Runtime consumers and their API keys in the store (docs/auth.md, "Consumers at run time").

Every operation that changes more than one key is one atomic `Script`: Lua for
Redis, a Python twin for the memory store. All keys share one Redis Cluster hash
slot (the `{ids}` tag), so each script sees every key it touches.

- `th:id:{ids}:all`: the ids of the runtime consumers (a sorted set: pages by id);
- `th:id:{ids}:c:<id>`: a consumer (JSON);
- `th:id:{ids}:k:<id>`: its keys (a hash: key id -> JSON, with the key's SHA-256);
- `th:id:{ids}:h:<sha256>`: a key's record (JSON: consumer, key id, expiry), expiring
  with the key: the lookup of the request path;
- `th:id:{ids}:used`: key id -> when it was last used (a hash);
- `th:id:{ids}:s:<session id>`: a browser session (JSON), expiring with it;
- `th:id:{ids}:cs:<consumer id>`: the ids of a consumer's sessions (a set), so that
  removing the consumer ends them;
- `th:id:{ids}:st:<state>`: a login under way (JSON: nonce, PKCE verifier, where to
  return), taken once by the callback.

Only a key's SHA-256 is ever stored; the plaintext is shown once, by the admin call
that made it.
"""
from __future__ import annotations

from ...store import Script

PREFIX = "th:id:{ids}:"
ALL = PREFIX + "all"
USED = PREFIX + "used"
#: Redis pub/sub channel of changes: every instance drops what it cached of them.
CHANNEL = "th:id:changes"


def consumer_key(consumer_id: str) -> str:
    return PREFIX + "c:" + consumer_id


def keys_key(consumer_id: str) -> str:
    return PREFIX + "k:" + consumer_id


def hash_key(sha_hex: str) -> str:
    return PREFIX + "h:" + sha_hex


# --- the Python twins (memory store: run synchronously, so atomically) -----------------

def session_key(session_id: str) -> str:
    return PREFIX + "s:" + session_id


def sessions_key(consumer_id: str) -> str:
    return PREFIX + "cs:" + consumer_id


def login_key(state: str) -> str:
    return PREFIX + "st:" + state


def _create_consumer(store, keys, args, now):
    if store.read(keys[0]) is not None:
        return 0
    store.write(keys[0], args[1])
    ids = store.read(keys[1]) or set()
    ids.add(args[0])
    store.write(keys[1], ids)
    return 1


def _replace_consumer(store, keys, args, now):
    if store.read(keys[0]) is None:
        return 0
    store.write(keys[0], args[0])
    return 1


def _delete_consumer(store, keys, args, now):
    """keys: consumer, all, its keys, used, its sessions -> [the SHA-256s of its keys, its
    session ids], or None if unknown."""
    if store.read(keys[0]) is None:
        return None
    sessions = sorted(store.read(keys[4]) or ())
    for session_id in sessions:
        store._drop(session_key(session_id))
    store._drop(keys[4])
    store._drop(keys[0])
    ids = store.read(keys[1]) or set()
    ids.discard(args[0])
    owned = store.read(keys[2]) or {}
    used = store.read(keys[3]) or {}
    hashes = []
    for key_id, meta in owned.items():
        sha = _field(meta, "sha256")
        hashes.append(sha)
        store._drop(hash_key(sha))
        used.pop(key_id, None)
    store._drop(keys[2])
    return [hashes, sessions]


def _create_key(store, keys, args, now):
    """keys: consumer, its keys, the hash record; args: key id, meta, record, ttl ms."""
    if store.read(keys[0]) is None:
        return 0
    owned = store.read(keys[1]) or {}
    owned[args[0]] = args[1]
    store.write(keys[1], owned)
    ttl = int(args[3])
    store.write(keys[2], args[2], ttl / 1000 if ttl > 0 else None)
    return 1


def _delete_key(store, keys, args, now):
    """keys: its keys, used; args: key id -> the key's meta, or None if unknown."""
    owned = store.read(keys[0]) or {}
    meta = owned.pop(args[0], None)
    if meta is None:
        return None
    store._drop(hash_key(_field(meta, "sha256")))
    (store.read(keys[1]) or {}).pop(args[0], None)
    return meta


def _list_consumers(store, keys, args, now):
    """args: after (exclusive, "" from the start), count -> [id, consumer JSON or "", ...] in id order."""
    ids = sorted(i for i in (store.read(keys[0]) or ()) if i > args[0])[:int(args[1])]
    out = []
    for i in ids:
        out += [i, store.read(consumer_key(i)) or ""]
    return out


def _list_keys(store, keys, args, now):
    """keys: consumer, its keys, used -> [exists, [meta, last used]...]."""
    if store.read(keys[0]) is None:
        return [0]
    used = store.read(keys[2]) or {}
    out = [1]
    for key_id, meta in sorted((store.read(keys[1]) or {}).items()):
        out += [meta, used.get(key_id)]
    return out


def _touch(store, keys, args, now):
    used = store.read(keys[0]) or {}
    for i in range(0, len(args), 2):
        used[args[i]] = args[i + 1]
    store.write(keys[0], used)
    return len(args) // 2


def _field(meta, name: str):
    import orjson

    return orjson.loads(meta)[name]


CREATE_CONSUMER = Script("id_create_consumer", """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
""", _create_consumer)

REPLACE_CONSUMER = Script("id_replace_consumer", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
""", _replace_consumer)

DELETE_CONSUMER = Script("id_delete_consumer", """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local owned = redis.call('HGETALL', KEYS[3])
local hashes = {}
for i = 1, #owned, 2 do
  local sha = cjson.decode(owned[i + 1])['sha256']
  hashes[#hashes + 1] = sha
  redis.call('DEL', ARGV[2] .. 'h:' .. sha)
  redis.call('HDEL', KEYS[4], owned[i])
end
redis.call('DEL', KEYS[3])
local sessions = redis.call('SMEMBERS', KEYS[5])
for _, sid in ipairs(sessions) do redis.call('DEL', ARGV[2] .. 's:' .. sid) end
redis.call('DEL', KEYS[5])
return {hashes, sessions}
""", _delete_consumer)

CREATE_KEY = Script("id_create_key", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl) else redis.call('SET', KEYS[3], ARGV[3]) end
return 1
""", _create_key)

DELETE_KEY = Script("id_delete_key", """
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return false end
redis.call('DEL', ARGV[2] .. 'h:' .. cjson.decode(meta)['sha256'])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return meta
""", _delete_key)

LIST_CONSUMERS = Script("id_list_consumers", """
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1] == '' and '-' or '(' .. ARGV[1], '+', 'LIMIT', 0,
                       tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', ARGV[3] .. 'c:' .. id) or ''
end
return out
""", _list_consumers)

LIST_KEYS = Script("id_list_keys", """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local owned = redis.call('HGETALL', KEYS[2])
local out = {1}
for i = 1, #owned, 2 do
  out[#out + 1] = owned[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[3], owned[i]) or ''
end
return out
""", _list_keys)

TOUCH = Script("id_touch", """
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
""", _touch)


# --- browser sessions ---------------------------------------------------------------

def _save_session(store, keys, args, now):
    """keys: the session, its consumer's set; args: session id, JSON, ttl ms."""
    store.write(keys[0], args[1], int(args[2]) / 1000)
    sessions = store.read(keys[1]) or set()
    sessions.add(args[0])
    store.write(keys[1], sessions)
    return 1


def _replace_session(store, keys, args, now):
    """The session's record changed (tokens refreshed, last seen): kept only if it still exists."""
    if store.read(keys[0]) is None:
        return 0
    ttl = store.expiry.get(keys[0])
    store.write(keys[0], args[0], max(ttl - now, 0.001) if ttl is not None else None)
    return 1


def _end_session(store, keys, args, now):
    existed = store.read(keys[0]) is not None
    store._drop(keys[0])
    (store.read(keys[1]) or set()).discard(args[0])
    return 1 if existed else 0


def _take(store, keys, args, now):
    value = store.read(keys[0])
    store._drop(keys[0])
    return value


SAVE_SESSION = Script("id_save_session", """
redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
""", _save_session)

REPLACE_SESSION = Script("id_replace_session", """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
return 1
""", _replace_session)

END_SESSION = Script("id_end_session", """
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return existed
""", _end_session)

#: GET and DEL in one step: a login's state is used once.
TAKE = Script("id_take", """
local value = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
return value
""", _take)
