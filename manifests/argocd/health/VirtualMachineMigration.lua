-- Argo CD health of a VirtualMachineMigration, gopher-lua (Lua 5.1): Succeeded is Healthy,
-- Failed is Degraded (with the reason and message, which say where the VM runs), anything
-- else Progressing. A migration's spec is immutable, so there is no generation to follow.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the seapath controller"
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (obj.status.reason or "Failed") .. ": " .. message
else
  hs.status = "Progressing"
  hs.message = phase .. ": " .. message
end
return hs
