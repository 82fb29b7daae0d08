-- wrk script: POST a Pub/Sub push envelope for a new data_date on every request.
-- The baseline's push-fresh.lua (../shared/baselines/seed-python-worker/) with one change: wrk
-- thread N starts at day N * STRIDE, STRIDE the script's first argument (`-- 30000`; the
-- original's 20,000 when absent). At ~4,000 req/s a 10 s round makes ~21,000 requests per
-- thread, so with 20,000 the first thread ran into the second's dates (already done there).
local b='ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r,b2='',x:byte()
    for i=8,1,-1 do r=r..(b2%2^i-b2%2^(i-1)>0 and '1' or '0') end
    return r
  end)..'0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end
    local c=0
    for i=1,6 do c=c+(x:sub(i,i)=='1' and 2^(6-i) or 0) end
    return b:sub(c+1,c+1)
  end)..({ '', '==', '=' })[#data%3+1])
end
counter = 0
next_tid = 0
function setup(thread) thread:set("tid", next_tid); next_tid = next_tid + 1 end
function init(args) counter = tid * (tonumber(args[1]) or 20000) end
local base = os.time{year=2000, month=1, day=1, hour=12}
request = function()
  counter = counter + 1
  local d = os.date("!%Y-%m-%d", base + counter * 86400)
  local data = b64('{"data_date":"' .. d .. '"}')
  local body = '{"message":{"data":"' .. data .. '","messageId":"m' .. tid .. '-' .. counter .. '","attributes":{"skip_downstream_trigger":"true"}},"subscription":"projects/demo/subscriptions/analytics"}'
  return wrk.format("POST", nil, {["Content-Type"]="application/json"}, body)
end
