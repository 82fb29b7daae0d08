"""Structure checks of terraform/ without cloud access (python-hcl2).

Asserts what the deployment relies on: every phase after the first subscribes to the previous
phase's completion topic (the convention matches the example pipeline.toml); every push
subscription has an OIDC token, a dead-letter policy, an exponential retry policy and an ack
deadline of the worker's processing timeout; every dead-letter topic has a subscription; the
ledger table is partitioned by data_date and clustered by processor_name. (The schema itself
is compared with the code by tests/terraform_schema.rs.)
"""
import pathlib
import sys
import tomllib

import hcl2

root = pathlib.Path(__file__).resolve().parent.parent
tf = {}
for f in sorted((root / "terraform").glob("*.tf")):
    with open(f) as fh:
        parsed = hcl2.load(fh)
    for key, value in parsed.items():
        tf.setdefault(key, []).extend(value)



def unwrap(x):
    """checkov's bc-python-hcl2 (which shadows python-hcl2's `hcl2` module when both are
    installed) wraps every attribute value in a one-element list; blocks stay lists of dicts."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if isinstance(v, list) and len(v) == 1 and not isinstance(v[0], dict):
                out[k] = v[0]  # an attribute: unwrap once
            else:
                out[k] = unwrap(v)
        return out
    if isinstance(x, list):
        return [unwrap(v) for v in x]
    return x


def is_wrapped(tree):
    for block in tree.get("variable", []):
        for body in block.values():
            return isinstance(body.get("type"), list)
    return False


if is_wrapped(tf):
    tf = {k: [unwrap(b) for b in v] for k, v in tf.items()}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def strip(s):
    return s.strip().removeprefix("${").removesuffix("}") if isinstance(s, str) else s


def resources(kind):
    out = {}
    for block in tf.get("resource", []):
        for k, named in block.items():
            if k == kind:
                for name, body in named.items():
                    out[name.strip('"')] = body
    return out


variables = {}
for block in tf.get("variable", []):
    for name, body in block.items():
        variables[name.strip('"')] = body
locals_ = {}
for block in tf.get("locals", []):
    locals_.update(block)

# The topic convention, evaluated in Python exactly as the HCL locals state it.
input_expr = strip(str(locals_.get("input_topic", "")))
check("var.phases[i - 1]" in input_expr and "-complete" in input_expr and "local.trigger_topic" in input_expr,
      f"local.input_topic must be the previous phase's completion topic, got: {input_expr}")
check(strip(str(locals_.get("completion_topic", ""))).find('${var.pipeline_name}-${p}-complete') >= 0,
      "local.completion_topic must be <pipeline>-<phase>-complete")

pipeline = tomllib.loads((root / "examples/nba/pipeline.toml").read_text())
phases = [p["name"] for p in pipeline["phases"]]
check(variables["phases"].get("default") == phases,
      f"var.phases default {variables['phases'].get('default')} != pipeline.toml phases {phases}")
name = variables["pipeline_name"]["default"]
expected_inputs = {p: (f"{name}-trigger" if i == 0 else f"{name}-{phases[i-1]}-complete") for i, p in enumerate(phases)}
for i, p in enumerate(pipeline["phases"]):
    check(p["completion_topic"] == f"{name}-{p['name']}-complete",
          f"pipeline.toml completion topic of {p['name']} does not follow the Terraform convention")
    actual_input = p.get("input_topic") or pipeline["phases"][i - 1]["completion_topic"]
    check(actual_input == expected_inputs[p["name"]],
          f"phase {p['name']} listens to {actual_input}, Terraform subscribes it to {expected_inputs[p['name']]}")

push = resources("google_pubsub_subscription").get("push")
check(push is not None, "google_pubsub_subscription.push is missing")
if push:
    check(push.get("for_each") is not None, "one push subscription per phase (for_each)")
    check("local.input_topic[each.key]" in str(push.get("topic")), "push subscription topic must be local.input_topic[each.key]")
    pc = push.get("push_config", [{}])[0]
    check("/push" in str(pc.get("push_endpoint")), "push endpoint must be the worker's /push")
    oidc = (pc.get("oidc_token") or [{}])[0]
    check(oidc.get("service_account_email") and oidc.get("audience"), "push subscription needs oidc_token with service account and audience")
    dl = (push.get("dead_letter_policy") or [{}])[0]
    check(dl.get("dead_letter_topic") and dl.get("max_delivery_attempts"), "push subscription needs a dead_letter_policy")
    rp = (push.get("retry_policy") or [{}])[0]
    check(rp.get("minimum_backoff") and rp.get("maximum_backoff"), "push subscription needs an exponential retry_policy")
    check("var.processing_timeout_seconds" in str(push.get("ack_deadline_seconds")),
          "ack deadline must be the worker's processing timeout")

dls = resources("google_pubsub_subscription").get("dead_letter")
check(dls is not None and "google_pubsub_topic.dead_letter" in str(dls.get("topic")), "every dead-letter topic needs a subscription")

run = resources("google_cloud_run_v2_service").get("worker")
check(run is not None, "google_cloud_run_v2_service.worker is missing")
if run:
    tmpl = run["template"][0]
    check("var.processing_timeout_seconds" in str(tmpl.get("timeout")), "Cloud Run timeout must be the processing timeout")
    check('"serve", "--phase"' in str(tmpl["containers"][0].get("args")).replace("'", '"'), "workers run `phasegate serve --phase P`")

invoker = resources("google_cloud_run_v2_service_iam_member").get("invoker")
check(invoker and invoker.get("role") == "roles/run.invoker" and "google_service_account.pusher" in str(invoker.get("member")),
      "run.invoker only for the push identity")
pub = resources("google_pubsub_topic_iam_member").get("completion_publisher")
check(pub and "google_pubsub_topic.completion[each.key]" in str(pub.get("topic")) and "worker[each.key]" in str(pub.get("member")),
      "each worker publishes to its own completion topic only")
project_roles = [str(b.get("role")) for b in resources("google_project_iam_member").values()]
check(set(project_roles) <= {"roles/bigquery.jobUser"}, f"no project-wide role beyond bigquery.jobUser: {project_roles}")

table = resources("google_bigquery_table").get("processor_run_history")
check(table is not None, "the ledger table is missing")
if table:
    tp = table["time_partitioning"][0]
    check(tp.get("field") == "data_date", "ledger partitioned by data_date")
    check(table.get("clustering") == ["processor_name"], "ledger clustered by processor_name")
    check("ledger_schema" in str(table.get("schema")), "ledger schema comes from ledger_schema.json")

if failures:
    print("terraform structure check FAILED:")
    for f in failures:
        print(" -", f)
    sys.exit(1)
print(f"terraform structure check: ok ({len(phases)} phases, every push subscription has OIDC, dead letters and retries)")
