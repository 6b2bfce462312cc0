#!lua
-- KEYS: lists...
-- ARGV: unacked, unacked_index, now, record...
-- Take the next message off a consumer's lists and record it as unacknowledged, in one step:
-- a Redis that dies at any instant either still has the entry in its list or has it in
-- kombu's `unacked` hash, whence restore_visible brings it back after the visibility timeout.
-- `unacked` is kombu's hash of unacknowledged deliveries, `unacked_index` its sorted set by
-- time, `lists` the consumer's lists in kombu's consuming order (each queue's priority lists,
-- most urgent first). `now` is the consumer's clock (the score kombu gives the index);
-- `record` holds one flag per list, in the same order: '1' to record what is taken from it
-- (acknowledged consumers), '0' not to (no_ack consumers).
-- Returns false when every list is empty, else {list, entry, delivery tag}: the tag is ''
-- when nothing was recorded (a '0' list, or an entry whose tag and delivery info a JSON
-- decoder cannot find: the consumer refuses those anyway).
-- The record is kombu's own (QoS.append): the delivery tag -> the JSON list [envelope,
-- exchange, routing key], scored by time in the index. The envelope is the entry itself,
-- byte for byte; only the two strings are encoded here.
-- The two record keys come in ARGV, not KEYS: Redis 7.0 tracks every key a script declares
-- once the script reads one (the EXISTS below), and every consumer's deliveries and acks
-- change these two, so each would wake every idle consumer (it remembers the commands' own
-- keys from 7.2 on). Not cluster-safe, as kombu's broker never is.
-- The `#!lua` line makes Redis (7+) refuse the whole script while it is out of memory under
-- noeviction, so a refused fetch has taken nothing.
-- A fetch that finds every list empty reads them once more (EXISTS: a read, where RPOP is a
-- write), so that a consumer tracking its keys (CLIENT TRACKING, on the connection that calls
-- this) is told by Redis when one of them next changes, and fetches again then instead of
-- polling. Without tracking the read only costs a count.
local unacked, unacked_index, now = ARGV[1], ARGV[2], ARGV[3]
-- `lists` is KEYS[1..], `record` ARGV[4..]: the list KEYS[i] has its flag at ARGV[i + 3].
local i = 1
while i <= #KEYS do
  local item = redis.pcall('RPOP', KEYS[i])
  -- A key of another type (an error reply, a table) is no queue: skip it, never stop here.
  if type(item) == 'string' then
    local tag = ''
    if ARGV[i + 3] == '1' then
      local ok, envelope = pcall(cjson.decode, item)
      if ok and type(envelope) == 'table' then
        local properties = envelope['properties']
        if type(properties) == 'table' then
          local info = properties['delivery_info']
          local t = properties['delivery_tag']
          if type(t) == 'string' and type(info) == 'table'
              and type(info['exchange']) == 'string'
              and type(info['routing_key']) == 'string' then
            tag = t
            redis.call('ZADD', unacked_index, now, tag)
            redis.call('HSET', unacked, tag, '[' .. item .. ', '
              .. cjson.encode(info['exchange']) .. ', '
              .. cjson.encode(info['routing_key']) .. ']')
          end
        end
      end
    end
    return {KEYS[i], item, tag}
  end
  i = i + 1
end
i = 1
while i <= #KEYS do
  local last = math.min(i + 99, #KEYS)
  redis.call('EXISTS', unpack(KEYS, i, last))
  i = last + 1
end
return false
