-- wrk: GET /test with a random one of the tokens in the file given after `--`.
local tokens = {}

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("GET", "/test", { ["Authorization"] = "Bearer " .. t })
end
