-- How a composed script splits its ARGV: each part is a count, then that many items.
local function section(from)
  local n = tonumber(ARGV[from])
  local out = {}
  for i = 1, n do out[i] = ARGV[from + i] end
  return out, from + n + 1
end
