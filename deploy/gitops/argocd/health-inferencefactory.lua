-- Argo CD health of an InferenceFactory (inference.factory.dev/v1alpha1), read from the
-- operator's status (operator/factory_operator/plan/status.py): conditions Ready,
-- Progressing and Degraded, each with the generation it was computed from.
--   no status yet, or generation not observed yet  -> Progressing
--   Degraded=True (blocked or failing pools)        -> Degraded, with its reason and message
--   Ready=True                                      -> Healthy
--   Ready=False, ManagedElsewhere (--region mode)   -> Healthy: no pool runs in this cluster
--   Progressing=True (a pool rolling out)           -> Progressing
--   Ready=False for any other reason                -> Degraded
-- Lua 5.1, as Argo CD's interpreter (gopher-lua); tests/unit/chart/test_argocd_health.py.
local hs = {}

local function condition(kind)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local generation = obj.metadata.generation
local ready = condition("Ready")
local stale = ready == nil
if generation ~= nil and not stale then
  local observed = obj.status.observedGeneration
  if observed == nil or observed < generation then
    stale = true
  end
  if ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    stale = true
  end
end
if stale then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

if ready.status == "True" or ready.reason == "ManagedElsewhere" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

local progressing = condition("Progressing")
if (progressing ~= nil and progressing.status == "True") or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = describe(ready)
  return hs
end

hs.status = "Degraded"
hs.message = describe(ready)
return hs
