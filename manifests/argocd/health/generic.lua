-- Argo CD health of the seapath.lfenergy.org snapshot kinds (VirtualMachineSnapshot,
-- VirtualMachineRestore, VirtualMachineSnapshotSchedule), gopher-lua (Lua 5.1): kstatus.
-- observedGeneration behind or Reconciling=True: Progressing; Stalled=True, phase Failed or
-- Ready=False with reason Failed: Degraded; Ready=True (or, without conditions, phase Ready or
-- Succeeded): Healthy.
local hs = {}
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
local ready, stalled, reconciling = nil, nil, nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Stalled" then stalled = c end
    if c.type == "Reconciling" then reconciling = c end
  end
end
local function describe(c, fallback)
  if c == nil then return fallback end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then text = text .. ": " .. c.message end
  return text
end
local phase = obj.status.phase
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
elseif phase == "Failed" then
  hs.status = "Degraded"
  if obj.status.error ~= nil and obj.status.error.message ~= nil then
    hs.message = "Failed: " .. obj.status.error.message
  else
    hs.message = describe(ready, "Failed")
  end
elseif ready == nil and (phase == "Ready" or phase == "Succeeded") then
  hs.status = "Healthy"
  hs.message = phase
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
elseif ready ~= nil and ready.status == "False" and ready.reason == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Failed")
else
  hs.status = "Progressing"
  hs.message = describe(ready, describe(reconciling, "Reconciling"))
end
return hs
