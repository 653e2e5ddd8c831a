-- Rate limits for a batch of requests (tollhouse/policies/ratelimit).
-- The twin of algorithms.py: same algorithms, same semantics. Each request's
-- limits are decided together and atomically; a rejected request changes nothing.
-- Requests in one call are decided in order, so a batch is exactly as if the
-- requests had arrived one after another.
-- Requests come in runs: consecutive requests with the same keys and limits (one
-- client's burst, a route or global key) are sent once with their count.
-- KEYS: the storage keys of every limit of every run, in order (one hash slot).
-- ARGV: number of profiles; per profile: number of limits, then per limit 5 values:
--       algorithm (0 fixed, 1 sliding, 2 bucket; +10 for a `scope: global` window counted
--       with the other regions' components, +20 for the same while partitioned with
--       on_partition: share, when `burst` carries the number of regions; +30 for a `mode: escrow`
--       window, when `burst` carries this region's share), limit, window_ms, burst, and the
--       request's cost (1, or its weight for a limit with `cost`: requests of different
--       weights are different profiles);
--       then the number of runs and, per run, the index (1-based) of its profile and its
--       number of requests. (Requests of one route share a profile: the batch carries it once.)
-- Uses the Redis server's clock, so gateway clocks may drift.
-- Returns, per request: allowed, then per limit: allowed, remaining, reset_ms, retry_ms.
-- A key's state is read from Redis once per call and written back once at the
-- end (requests of one batch often share a key: one client, a route, global),
-- so the call costs Redis commands per distinct key, not per request.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Profiles parsed once per call (not per request): profile -> flat list of
-- algo, limit, window, burst, cost for each of its limits.
local profiles = {}
local argi = 2
for p = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[argi])
  local spec = {}
  for j = 1, 5 * n do spec[j] = tonumber(ARGV[argi + j]) end
  profiles[p] = spec
  argi = argi + 1 + 5 * n
end
local nruns = tonumber(ARGV[argi])
local runi = argi + 1
local out = {}
local keyi = 1
local states = {}   -- key -> {tat} or {w, c, p}, as read or as last updated
local dirty = {}    -- keys to write back, in first-update order
local ttls = {}     -- key -> PEXPIRE milliseconds (windows) or 0 (bucket: from its tat)
local upd = {}      -- the current request's pending updates, flat, 6 per limit:
                    -- state table, key, then tat, 0, 0, 0 (bucket) or window, count, previous, ttl
local no = 0        -- entries in out
local foreign = {}  -- key -> the other regions' components (HGETALL of key:regions), for global limits
local global = {}   -- keys of global limits counted in this call (to publish to the other regions)
local escrow = {}   -- keys of escrow limits asked in this call (for the region sync to borrow for)
for run = 1, nruns do
  local spec = profiles[tonumber(ARGV[runi])]
  local count = tonumber(ARGV[runi + 1])
  runi = runi + 2
  local run_keys = keyi
  for r = 1, count do
    keyi = run_keys   -- each request of a run reads the run's keys
    no = no + 1
    local head = no
    local nu = 0
    local all = 1
    for si = 1, #spec, 5 do
      local algo, limit, window, burst, cost = spec[si], spec[si + 1], spec[si + 2], spec[si + 3], spec[si + 4]
      local scope = 0
      if algo >= 30 then scope, algo = 3, algo - 30
      elseif algo >= 20 then scope, algo = 2, algo - 20 elseif algo >= 10 then scope, algo = 1, algo - 10 end
      local key = KEYS[keyi]
      keyi = keyi + 1
      local ok, remaining, reset, retry = 1, 0, 0, 0
      if algo == 2 then
        local interval = window / limit
        local st = states[key]
        if st == nil then
          st = {tonumber(redis.call('GET', key) or '0')}
          states[key] = st
        end
        local tat = st[1]
        if tat < now then tat = now end
        local new_tat = tat + interval * cost
        local allow_at = new_tat - burst * interval
        if now < allow_at - 1e-6 then  -- as algorithms.py: float error is no refusal
          -- What is left (more than 0 only for a request weighing more than 1).
          ok, remaining, reset, retry = 0, math.max(0, math.floor((now - tat) / interval + burst + 1e-6)), tat - now, allow_at - now
        else
          remaining = math.floor((now - allow_at) / interval + 1e-6)
          reset = new_tat - now
          upd[nu + 1], upd[nu + 2], upd[nu + 3], upd[nu + 4], upd[nu + 5], upd[nu + 6] = st, key, new_tat, 0, 0, 0
          nu = nu + 6
        end
      else
        local index = math.floor(now / window)
        local window_end = (index + 1) * window
        local st = states[key]
        if st == nil then
          if scope == 3 then
            -- Escrow: own count, then what was got from and lent to the peers this window,
            -- and the demand (requests that asked, admitted or not) this and last window.
            local state = redis.call('HMGET', key, 'w', 'c', 'p', 'g', 'l', 'd', 'q')
            st = {tonumber(state[1]), tonumber(state[2] or '0'), tonumber(state[3] or '0'), tonumber(state[4] or '0'),
                  tonumber(state[5] or '0'), tonumber(state[6] or '0'), tonumber(state[7] or '0')}
          else
            local state = redis.call('HMGET', key, 'w', 'c', 'p')
            st = {tonumber(state[1]), tonumber(state[2] or '0'), tonumber(state[3] or '0')}
          end
          states[key] = st
        end
        if scope == 3 then
          if st[1] ~= index then
            -- A new window: the share is whole again (what was lent or borrowed was for the last one).
            local last = st[1] == index - 1
            st[1], st[2], st[3], st[4], st[5], st[6], st[7] = index, 0, last and st[2] or 0, 0, 0, 0, last and st[6] or 0
          end
          st[6] = st[6] + cost
          if ttls[key] == nil then dirty[#dirty + 1] = key; ttls[key] = 2 * window end
          escrow[key] = true
        end
        local w, c, p = st[1], st[2], st[3]
        local cur, prev = 0, 0
        if w == index then
          cur, prev = c, p
        elseif w == index - 1 then
          cur, prev = 0, c
        end
        if algo == 0 then prev = 0 end
        local own = cur
        if scope == 3 then
          -- Escrow: this region admits within what it holds: its share, plus what it got, less what it lent.
          limit = burst + st[4] - st[5]
        elseif scope > 0 then
          -- A G-counter: this region's component plus the last-known components of the
          -- others, each "window:count:previous" under its region's name.
          local f = foreign[key]
          if f == nil then
            f = {0, 0}
            local all = redis.call('HGETALL', key .. ':regions')
            for fi = 2, #all, 2 do
              local fw, fc, fp = string.match(all[fi], '^(%-?%d+):(%d+):(%d+)$')
              fw, fc, fp = tonumber(fw), tonumber(fc), tonumber(fp)
              if fw == index then f[1], f[2] = f[1] + fc, f[2] + fp
              elseif fw == index - 1 then f[2] = f[2] + fc end
            end
            foreign[key] = f
          end
          cur = cur + f[1]
          if algo ~= 0 then prev = prev + f[2] end
        end
        reset = window_end - now
        if algo == 0 then
          if cur + cost > limit then
            ok, remaining, retry = 0, math.max(0, limit - cur), window_end - now
          else
            remaining = limit - cur - cost
          end
        else
          local weight = 1 - (now - index * window) / window
          local estimate = prev * weight + cur
          if estimate + cost > limit then
            ok = 0
            remaining = math.max(0, math.floor(limit - estimate))
            local room = limit - cost - cur
            if room >= 0 and prev > 0 then
              retry = math.max(0, index * window + (1 - room / prev) * window - now)
            elseif cur <= 0 then
              retry = window_end - now
            else
              retry = window_end - now + math.max(0, 1 - (limit - cost) / cur) * window
            end
          else
            remaining = math.max(0, math.floor(limit - estimate - cost))
          end
        end
        if ok == 1 and scope == 2 and own + cost > math.ceil(limit / burst) then
          -- Partitioned (on_partition: share): this region admits its share of the limit at most.
          ok, remaining, retry = 0, 0, window_end - now
        end
        if ok == 1 then
          -- Only this region's own component is counted here.
          upd[nu + 1], upd[nu + 2], upd[nu + 3], upd[nu + 4], upd[nu + 5], upd[nu + 6] =
            st, key, index, own + cost, st[1] == index and st[3] or (st[1] == index - 1 and st[2] or 0), 2 * window
          nu = nu + 6
          if scope == 1 or scope == 2 then global[key] = true end
        end
      end
      if ok == 0 then all = 0 end
      out[no + 1], out[no + 2], out[no + 3], out[no + 4] = ok, remaining, math.ceil(reset), math.ceil(retry)
      no = no + 4
    end
    out[head] = all
    if all == 1 then
      -- Only now, with every limit allowing, is the request counted (in place).
      for u = 1, nu, 6 do
        local st, key, ttl = upd[u], upd[u + 1], upd[u + 5]
        if ttls[key] == nil then dirty[#dirty + 1] = key end
        ttls[key] = ttl
        st[1] = upd[u + 2]
        if ttl ~= 0 then st[2], st[3] = upd[u + 3], upd[u + 4] end
      end
    end
  end
end
for _, key in ipairs(dirty) do
  local st = states[key]
  if ttls[key] == 0 then
    redis.call('SET', key, tostring(st[1]), 'PX', math.max(1, math.ceil(st[1] - now)))
  elseif escrow[key] then
    redis.call('HSET', key, 'w', st[1], 'c', st[2], 'p', st[3], 'g', st[4], 'l', st[5], 'd', st[6], 'q', st[7])
    redis.call('PEXPIRE', key, ttls[key])
    redis.call('SADD', string.sub(key, 1, string.find(key, '}', 1, true)) .. ':escrow', key)
  else
    redis.call('HSET', key, 'w', st[1], 'c', st[2], 'p', st[3])
    redis.call('PEXPIRE', key, ttls[key])
    if global[key] then
      -- Noted for the region sync, which publishes changed components to the peers.
      redis.call('SADD', string.sub(key, 1, string.find(key, '}', 1, true)) .. ':dirty', key)
    end
  end
end
return out
