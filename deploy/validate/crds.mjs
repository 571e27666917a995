// Validates the custom resources collected by checks.py against the JSON schemas shipped by
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator.
// Usage: node crds.mjs custom-resources.json
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ScaledObject, ServiceMonitor, PrometheusRule };
const resources = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const { source, object } of resources) {
  const Model = models[object.kind];
  try {
    if (!Model) throw new Error(`no model for ${object.apiVersion} ${object.kind}`);
    new Model(object).validate();
    console.log(`  ok   ${source} (schema)`);
  } catch (e) {
    failed += 1;
    console.log(`  FAIL ${source}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
