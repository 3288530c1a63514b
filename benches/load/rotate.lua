-- Each request carries the next of the harness's 10,000 tokens (tokens.txt,
-- one secret per line), so every lookup and limiter touch a different entry.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_TXT")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
