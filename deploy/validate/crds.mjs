// Validates the custom resources collected by checks.py against the CRD schemas compiled into
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator, strictly: a field the
// schema does not define fails, as with the API server's strict field validation (kubectl's
// default). The compiled validators accept unknown fields, so each object is wrapped in a Proxy
// that records which keys the validator looks up: a validator reads every property its schema
// defines, and enumerates the keys of maps (additionalProperties). A key of an object that the
// validator read from, but never looked up or enumerated, is unknown. An object the validator
// did not look into at all is opaque to the schema (x-kubernetes-preserve-unknown-fields).
// Usage: node crds.mjs custom-resources.json
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule };

// Wraps `value` (and, lazily, everything below it) to record the validator's look-ups.
function instrument(value, path, records) {
  if (value === null || typeof value !== "object") return value;
  const record = { path, value, looked: new Set(), enumerated: false };
  records.push(record);
  const children = new Map();
  const lookedUp = (key) => {
    if (typeof key === "string") record.looked.add(key);
  };
  return new Proxy(value, {
    get(target, key, receiver) {
      lookedUp(key);
      const child = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || !Object.hasOwn(target, key)) return child;
      if (!children.has(key)) {
        const where = Array.isArray(target) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
        children.set(key, instrument(child, where, records));
      }
      return children.get(key);
    },
    has(target, key) {
      lookedUp(key);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      lookedUp(key);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(records) {
  const unknown = [];
  for (const { path, value, looked, enumerated } of records) {
    if (Array.isArray(value) || enumerated || looked.size === 0) continue;
    for (const key of Object.keys(value)) {
      if (!looked.has(key)) unknown.push(path ? `${path}.${key}` : key);
    }
  }
  return unknown;
}

const resources = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const { source, object } of resources) {
  const Model = models[object.kind];
  try {
    if (!Model) throw new Error(`no schema known for ${object.apiVersion} ${object.kind}`);
    const records = [];
    // The model's validate() runs the compiled schema on `this`; give it the wrapped object.
    Model.prototype.validate.call(instrument(object, "", records));
    const unknown = unknownFields(records);
    if (unknown.length) throw new Error(`unknown field(s): ${unknown.join(", ")}`);
    console.log(`  ok   ${source} (schema, strict)`);
  } catch (e) {
    failed += 1;
    console.log(`  FAIL ${source}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
