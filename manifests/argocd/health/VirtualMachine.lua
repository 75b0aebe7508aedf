-- Argo CD health of seapath.lfenergy.org/VirtualMachine (gopher-lua, Lua 5.1).
-- Follows kstatus: a status for an older generation, or Reconciling=True, is Progressing;
-- Stalled=True is Degraded; Ready=True is Healthy (Suspended when the VM is meant to be
-- stopped or disabled). The message is the Ready condition's.
local hs = {}
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the seapath controller"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the seapath controller to observe generation " .. tostring(generation)
  return hs
end
local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local function describe(c, fallback)
  if c == nil then return fallback end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then text = text .. ": " .. c.message end
  return text
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end
if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "the VM failed")
  return hs
end
if ready ~= nil and ready.status == "True" then
  local desired = "Started"
  if obj.spec ~= nil and obj.spec.state ~= nil then desired = obj.spec.state end
  if desired == "Started" then
    hs.status = "Healthy"
  else
    hs.status = "Suspended"
  end
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(ready, describe(reconciling, "Reconciling"))
else
  hs.message = describe(ready, "Waiting for the VM to become Ready")
end
return hs
