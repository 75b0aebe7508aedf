-- Argo CD health of seapath.lfenergy.org/Hypervisor (gopher-lua, Lua 5.1).
-- The node agent keeps the Ready condition: True is Healthy (Suspended when the hypervisor is
-- cordoned with spec.unschedulable), False or Unknown is Degraded (the agent cannot reach
-- libvirt or stopped reporting), no condition yet is Progressing.
local hs = {}
local ready = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the node agent to report"
  return hs
end
local message = ready.reason or ""
if ready.message ~= nil and ready.message ~= "" then message = message .. ": " .. ready.message end
hs.message = message
if ready.status == "True" then
  if obj.spec ~= nil and obj.spec.unschedulable == true then
    hs.status = "Suspended"
    hs.message = "Unschedulable: takes no new VM; " .. message
  else
    hs.status = "Healthy"
  end
else
  hs.status = "Degraded"
end
return hs
