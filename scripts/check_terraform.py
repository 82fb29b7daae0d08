"""Structure checks of the deployment without cloud access (python-hcl2).

Asserts what the deployment relies on and what a reviewer would otherwise check by hand:
- topology: every phase after the first subscribes to the previous phase's completion topic
  (the convention matches the example pipeline.toml); every push subscription has an OIDC
  token, a dead-letter policy, an exponential retry policy and an ack deadline of the worker's
  processing timeout; every dead-letter topic has a subscription;
- apply-time failures caught at plan time: a validation block on every non-boolean variable,
  with the bounds Google Cloud enforces (ids, lengths, delivery attempts, backoff, ack
  deadline); a google_project_service for the API of every resource type used; every resource
  takes its project from the enabled APIs; the Pub/Sub service identity is created; the
  provider constraint's lower bound covers the newest attribute used;
- configuration at deploy time: the pipeline file comes from Secret Manager, mounted on every
  service with PHASEGATE_CONFIG pointing at it; deploy/Dockerfile bakes no configuration, pins
  base images by digest, caches dependencies (cargo-chef) and runs as non-root on distroless;
- one owner: no Cloud Run service definition outside Terraform (deploy/ only builds images);
- operations: the scheduler job publishes a dateless trigger on the first phase's input; alert
  policies on dead-letter backlog and on blocked/failed runs (log-based metric), notifying
  var.notification_channels;
- least privilege: run.invoker only for the push identity; each worker publishes only to its
  own completion topic; no unconditional project-wide role beyond bigquery.jobUser and
  monitoring.metricWriter; no BigQuery role that can drop or re-create a table (the ledger's
  writer role holds row permissions only); Firestore access (roles/datastore.user) for the
  workers only, and only with the IAM condition naming this module's database;
- the coordination store: one named Firestore database in Native mode, a TTL policy on
  expire_at for the claims and events collection groups, the other document fields exempt
  from indexing, firestore.googleapis.com enabled and waited for, and the workers told
  (PHASEGATE_COORDINATION=firestore, PHASEGATE_FIRESTORE_DATABASE from the database);
- the ledger table is partitioned by data_date and clustered by pipeline, processor_name (its schema is
  compared with the code by tests/it/terraform_schema.rs);
- terraform/examples/daily is a root module calling this one;
- the graph (also run on terraform/test-fixtures/, where each bad module must fail its
  check, so every check can fail): every table-level IAM grant names a table the module
  creates; every resource whose API the module enables reaches google_project_service.api
  through its references (project = local.project, or a depends_on); a Cloud Scheduler
  trigger is refused by `terraform plan` unless the pipeline file has [trigger] with the
  scheduler's time zone (validation blocks, also evaluated by terraform plan below); every
  Firestore database is a named one in Native mode, with a TTL policy on expire_at for each
  collection group; every roles/datastore.* grant carries the documented per-database
  condition resource.name == "projects/…/databases/<a database this module creates>";
- every table the workers use is created by Terraform (ledger, claims, output and source
  tables, DAY-partitioned and clustered), and the example's schemas, partitioning and
  clustering agree with the example pipeline's setup.bigquery statements; the example's
  [trigger] agrees with the
  example root module's schedule_time_zone, read both by tomllib and by the regular
  expressions Terraform uses;
- alerts: dead letters, oldest unacked message age per push subscription, blocked/failed,
  refusals, Cloud Scheduler failures, freshness, ledger rewrites (DELETE included); every
  alert policy on a log-based metric waits for it (time_sleep);
- deploy/command-processor/Dockerfile derives from the phasegate image.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import hcl2

root = pathlib.Path(__file__).resolve().parent.parent
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


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


def load(directory):
    tree = {}
    for f in sorted(directory.glob("*.tf")):
        with open(f) as fh:
            for key, value in hcl2.load(fh).items():
                tree.setdefault(key, []).extend(value)
    if is_wrapped(tree):
        tree = {k: [unwrap(b) for b in v] for k, v in tree.items()}
    return tree


tf = load(root / "terraform")


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


def all_resources():
    for block in tf.get("resource", []):
        for kind, named in block.items():
            for name, body in named.items():
                yield kind, name.strip('"'), body


def first(block_list):
    return (block_list or [{}])[0]


variables = {}
for block in tf.get("variable", []):
    for name, body in block.items():
        variables[name.strip('"')] = body
locals_ = {}
for block in tf.get("locals", []):
    locals_.update(block)


# ── Topology ──────────────────────────────────────────────────────────────────────────────

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
    pc = first(push.get("push_config"))
    check("/push" in str(pc.get("push_endpoint")) and ".uri" in str(pc.get("push_endpoint")),
          "push endpoint must be the worker's run.app URI + /push")
    oidc = first(pc.get("oidc_token"))
    check(oidc.get("service_account_email") and oidc.get("audience"), "push subscription needs oidc_token with service account and audience")
    dl = first(push.get("dead_letter_policy"))
    check("var.max_delivery_attempts" in str(dl.get("max_delivery_attempts")) and dl.get("dead_letter_topic"),
          "push subscription needs a dead_letter_policy with var.max_delivery_attempts")
    rp = first(push.get("retry_policy"))
    check("var.retry_minimum_backoff_seconds" in str(rp.get("minimum_backoff"))
          and "var.retry_maximum_backoff_seconds" in str(rp.get("maximum_backoff")),
          "push subscription needs an exponential retry_policy from the validated backoff variables")
    check("var.processing_timeout_seconds" in str(push.get("ack_deadline_seconds")),
          "ack deadline must be the worker's processing timeout")

dls = resources("google_pubsub_subscription").get("dead_letter")
check(dls is not None and "google_pubsub_topic.dead_letter" in str(dls.get("topic")), "every dead-letter topic needs a subscription")

run = resources("google_cloud_run_v2_service").get("worker")
check(run is not None, "google_cloud_run_v2_service.worker is missing")
tmpl = first(run.get("template")) if run else {}
container = first(tmpl.get("containers"))
if run:
    check("var.processing_timeout_seconds" in str(tmpl.get("timeout")), "Cloud Run timeout must be the processing timeout")
    check('"serve", "--phase"' in str(container.get("args")).replace("'", '"'), "workers run `phasegate serve --phase P`")
    limits = first(container.get("resources")).get("limits", {})
    limits = limits[0] if isinstance(limits, list) else limits
    check("var.cpu" in str(limits) and "var.memory" in str(limits), "worker cpu/memory limits come from var.cpu / var.memory")
    scaling = first(tmpl.get("scaling"))
    check("var.min_instances" in str(scaling.get("min_instance_count")) and "var.max_instances" in str(scaling.get("max_instance_count")),
          "worker scaling comes from var.min_instances / var.max_instances")
    check("var.worker_concurrency" in str(tmpl.get("max_instance_request_concurrency")), "concurrency comes from var.worker_concurrency")
    check("var.ingress" in str(run.get("ingress")), "ingress comes from var.ingress")
check(variables["ingress"].get("default") == "INGRESS_TRAFFIC_INTERNAL_ONLY",
      "ingress defaults to INGRESS_TRAFFIC_INTERNAL_ONLY (Pub/Sub push from the same project is internal)")


# ── Validation at plan time ───────────────────────────────────────────────────────────────

def conditions(var):
    return " ".join(str(v.get("condition")) for v in variables.get(var, {}).get("validation", []))


for var, body in variables.items():
    check(body.get("description"), f"variable {var} has no description")
    if "bool" not in str(body.get("type")):
        check(body.get("validation"), f"variable {var} has no validation block (GCP would reject bad values only at apply)")

required_bounds = {
    "project_id": ["regex"],
    "pipeline_name": ["regex", "20"],
    "phases": ['"pg-', "30", '"phasegate-', "49", "distinct"],
    "max_delivery_attempts": [">= 5", "<= 100"],
    "retry_minimum_backoff_seconds": [">= 0", "<= 600"],
    "retry_maximum_backoff_seconds": [">= 0", "<= 600", "var.retry_minimum_backoff_seconds <= var.retry_maximum_backoff_seconds"],
    "processing_timeout_seconds": [">= 10", "<= 600"],
    "max_instances": ["var.min_instances"],
    "dataset_id": ["regex"],
    "labels": ["regex"],
    "output_tables": ["var.phases", "processor_run_history", "processor_run_claims", "DATE", "<= 4"],
    "source_tables": ["processor_run_history", "DATE"],
    "schedule_time_zone": ["var.enable_scheduler", "var.config_file", "timezone", "trigger"],
    "enable_scheduler": ["var.config_file", "trigger"],
    "config_file": ["file(var.config_file)"],
    "firestore_database_id": ["regex", "[a-z][a-z0-9-]{2,61}[a-z0-9]"],
    "firestore_location": ["nam5", "eur3", "regex"],
}
for var, needles in required_bounds.items():
    cond = conditions(var).replace("'", '"')
    for needle in needles:
        check(needle in cond, f"variable {var}: validation must enforce {needle!r} (got: {cond})")


# ── APIs, identity, provider range ────────────────────────────────────────────────────────

API_OF = {
    "google_pubsub_": "pubsub.googleapis.com",
    "google_cloud_run_v2_": "run.googleapis.com",
    "google_bigquery_": "bigquery.googleapis.com",
    "google_secret_manager_": "secretmanager.googleapis.com",
    "google_cloud_scheduler_": "cloudscheduler.googleapis.com",
    "google_monitoring_": "monitoring.googleapis.com",
    "google_logging_": "logging.googleapis.com",
    "google_service_account": "iam.googleapis.com",
    "google_project_iam_custom_role": "iam.googleapis.com",
    "google_project_iam_member": "cloudresourcemanager.googleapis.com",
    "google_artifact_registry_": "artifactregistry.googleapis.com",
    "google_firestore_": "firestore.googleapis.com",
}
apis = set(re.findall(r"[a-z]+\.googleapis\.com", str(locals_.get("apis"))))
check("local.apis" in str(resources("google_project_service").get("api", {}).get("for_each")),
      "google_project_service.api must enable local.apis")
for kind, rname, body in all_resources():
    for prefix, api in API_OF.items():
        if kind.startswith(prefix):
            check(api in apis, f"{kind}.{rname} needs {api} in local.apis")
    if kind != "google_project_service" and "project" in body:
        check(strip(str(body["project"])) == "local.project",
              f"{kind}.{rname}: project must be local.project (created after the APIs are enabled)")
check("google_project_service.api" in str(locals_.get("project")), "local.project must come from google_project_service.api")

identity = resources("google_project_service_identity").get("pubsub")
check(identity is not None and identity.get("service") == "pubsub.googleapis.com" and "google-beta" in str(identity.get("provider")),
      "google_project_service_identity.pubsub (google-beta provider) must create the Pub/Sub service agent")
check("google_project_service_identity.pubsub" in str(locals_.get("pubsub_agent")),
      "the Pub/Sub service agent's grants must use the created identity")

providers = {}
for block in tf.get("terraform", []):
    for rp in block.get("required_providers", []):
        providers.update(rp)


def provider_version(table, prov):
    spec = table.get(prov) or {}
    return first(spec).get("version") if isinstance(spec, list) else spec.get("version")


def lower_bound(constraint):
    m = re.search(r">=\s*(\d+)\.(\d+)", str(constraint))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


check(provider_version(providers, "time") is not None and "< 1.0" in str(provider_version(providers, "time")),
      "provider hashicorp/time (time_sleep) must be required, below 1.0")
for prov in ("google", "google-beta"):
    constraint = provider_version(providers, prov)
    # deletion_protection on google_cloud_run_v2_service: provider 6.0.
    check(lower_bound(constraint) >= (6, 0), f"provider {prov} must require >= 6.0 (got {constraint})")
    check("< 8.0" in str(constraint), f"provider {prov} must stop before the unreviewed 8.0 (got {constraint})")


# ── Configuration at deploy time ──────────────────────────────────────────────────────────

version = resources("google_secret_manager_secret_version").get("config")
check(version is not None and "var.config_file" in str(version.get("secret_data")),
      "the pipeline file must be a Secret Manager secret version from var.config_file")
volume = first(tmpl.get("volumes"))
check("google_secret_manager_secret.config" in str(first(volume.get("secret")).get("secret")),
      "every worker must mount the config secret as a volume")
check("google_secret_manager_secret_version.config.version" in str(volume),
      "the volume must pin the secret version (a new config is a new revision)")
mount = first(container.get("volume_mounts"))
check(mount.get("name") == volume.get("name") and "var.config_mount_dir" in str(mount.get("mount_path")),
      "the config volume must be mounted at var.config_mount_dir")
env = {e.get("name"): e.get("value") for e in container.get("env", [])}
check(strip(str(env.get("PHASEGATE_CONFIG"))) == "local.config_path" and "var.config_mount_dir" in str(locals_.get("config_path")),
      "PHASEGATE_CONFIG must point at the mounted pipeline file")
accessor = resources("google_secret_manager_secret_iam_member").get("worker_config_accessor")
check(accessor and accessor.get("role") == "roles/secretmanager.secretAccessor" and "google_secret_manager_secret.config" in str(accessor.get("secret_id")),
      "each worker may read the config secret (and only it)")

dockerfile = (root / "deploy/Dockerfile").read_text()
instructions = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")]
froms = [line for line in instructions if line.upper().startswith("FROM ")]
for line in froms:
    image = line.split()[1]
    if ":" in image or "/" in image:  # an external image, not a previous stage
        check(re.search(r"@sha256:[0-9a-f]{64}$", image), f"Dockerfile: base image not pinned by digest: {image}")
runtime = instructions[instructions.index(froms[-1]):]
check("distroless" in froms[-1], "Dockerfile: the runtime stage must be distroless (no shell)")
check(not any(re.search(r"\.toml\b", line) for line in runtime if line.upper().startswith(("COPY", "ADD"))),
      "Dockerfile: the runtime image must not contain a pipeline file")
check(not any("PHASEGATE_CONFIG" in line for line in instructions), "Dockerfile: PHASEGATE_CONFIG must not be set in the image")
users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
check(users and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile: the runtime stage must run as a non-root user")
check(any("cargo chef cook" in line for line in instructions), "Dockerfile: dependencies must be cached in their own layer (cargo chef cook)")


# ── One owner per resource ────────────────────────────────────────────────────────────────

deploy_files = [p for p in (root / "deploy").rglob("*") if p.is_file()]
check(not any(p.suffix in (".yaml", ".yml") and p.name != "cloudbuild.yaml" for p in deploy_files),
      "deploy/ must not define services (Terraform owns them); only cloudbuild.yaml (images) is allowed")
cloudbuild = (root / "deploy/cloudbuild.yaml").read_text()
check(not re.search(r"\brun\b.*\b(deploy|replace|update)\b", cloudbuild) and "deploy/Dockerfile" in cloudbuild
      and "deploy/command-processor/Dockerfile" in cloudbuild,
      "deploy/cloudbuild.yaml builds the two images and deploys nothing")
cp = (root / "deploy/command-processor/Dockerfile").read_text()
cp_lines = [line.strip() for line in cp.splitlines() if line.strip() and not line.lstrip().startswith("#")]
cp_froms = [line for line in cp_lines if line.upper().startswith("FROM ")]
check(len(cp_froms) == 2 and "${PHASEGATE_IMAGE}" in cp_froms[0] and re.search(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", cp_froms[1]),
      "command-processor Dockerfile: the phasegate image, then python:3.11-slim-bookworm pinned by digest (the build stage's Debian)")
check(any("COPY --from=phasegate /usr/local/bin/phasegate" in line for line in cp_lines),
      "command-processor Dockerfile must copy the phasegate binary from the phasegate image")
check(not any("PHASEGATE_CONFIG" in line for line in cp_lines) and not any(re.search(r"\.toml\b", line) for line in cp_lines if line.upper().startswith(("COPY", "ADD"))),
      "command-processor Dockerfile: no pipeline file baked in")
cp_users = [line.split()[1] for line in cp_lines if line.upper().startswith("USER ")]
check(cp_users and cp_users[-1].split(":")[0] not in ("0", "root"), "command-processor Dockerfile: non-root")
deploy_sh = (root / "deploy/deploy.sh").read_text()
check(not re.search(r"gcloud\s+run\s+(deploy|services\s+(replace|update|create))", deploy_sh),
      "deploy/deploy.sh must not create or change services itself (it rolls out through Terraform)")


# ── Operations ────────────────────────────────────────────────────────────────────────────

job = resources("google_cloud_scheduler_job").get("daily_trigger")
check(job is not None, "google_cloud_scheduler_job.daily_trigger is missing")
if job:
    target = first(job.get("pubsub_target"))
    check("google_pubsub_topic.trigger" in str(target.get("topic_name")), "the scheduler publishes to the trigger topic (the first phase's input)")
    check("local.scheduled_trigger_body" in str(target.get("data")), "the scheduler's body is local.scheduled_trigger_body")
    body = str(locals_.get("scheduled_trigger_body"))
    check("trigger" in body and "data_date" not in body, f"the scheduled trigger carries no data_date (got {body})")
    check(strip(str(job.get("time_zone"))) == "var.schedule_time_zone", "the schedule's time zone is var.schedule_time_zone")

policies = resources("google_monitoring_alert_policy")
for pname, policy in policies.items():
    check(strip(str(policy.get("notification_channels"))) == "var.notification_channels",
          f"alert policy {pname} must notify var.notification_channels")
filters = {pname: str(first(first(p.get("conditions")).get("condition_threshold")).get("filter")) for pname, p in policies.items()}
check(any("num_undelivered_messages" in f and "google_pubsub_subscription.dead_letter" in f for f in filters.values()),
      "an alert policy must watch the dead-letter subscriptions' backlog")
check(any("google_logging_metric.blocked_or_failed" in f for f in filters.values()),
      "an alert policy must watch the blocked/failed log-based metric")
check(any("google_logging_metric.ledger_rewrite" in f for f in filters.values()),
      "an alert policy must watch rewrites of the ledger (what IAM cannot forbid)")
rewrite = resources("google_logging_metric").get("ledger_rewrite")
check(rewrite is not None and "google_bigquery_table.processor_run_history" in str(rewrite.get("filter"))
      and all(s in str(rewrite.get("filter")) for s in ("UPDATE", "MERGE", "DELETE", "TRUNCATE_TABLE")),
      "the ledger-rewrite metric must count UPDATE/MERGE/DELETE/TRUNCATE on the ledger (phasegate only inserts into it)")
metric = resources("google_logging_metric").get("blocked_or_failed")
check(metric is not None, "google_logging_metric.blocked_or_failed is missing")
if metric:
    mfilter = str(metric.get("filter")).replace("\\", "")  # drop HCL escapes
    check("jsonPayload.outcome" in mfilter and '"blocked"' in mfilter and '"failed"' in mfilter,
          f"the log metric must count jsonPayload.outcome blocked or failed (got {mfilter})")
    check("jsonPayload.phase" in str(metric.get("label_extractors")), "the log metric must label by jsonPayload.phase")


# ── Least privilege ───────────────────────────────────────────────────────────────────────

# The worker is the one token check: Cloud Run's invoker check must be off (with it on, Cloud
# Run strips the token's signature and the worker refuses every push), and no run.invoker grant
# on a worker may suggest otherwise; the ingress stays internal by default.
worker = resources("google_cloud_run_v2_service").get("worker") or {}
check(worker.get("invoker_iam_disabled") is True,
      "google_cloud_run_v2_service.worker: invoker_iam_disabled = true (the worker verifies the whole token)")
check(not resources("google_cloud_run_v2_service_iam_member"),
      "no google_cloud_run_v2_service_iam_member on a worker: its invoker check is off, the worker's allow-list decides")
check(variables.get("ingress", {}).get("default") == "INGRESS_TRAFFIC_INTERNAL_ONLY",
      "variable ingress defaults to INGRESS_TRAFFIC_INTERNAL_ONLY")
pub = resources("google_pubsub_topic_iam_member").get("completion_publisher")
check(pub and "google_pubsub_topic.completion[each.key]" in str(pub.get("topic")) and "worker[each.key]" in str(pub.get("member")),
      "each worker publishes to its own completion topic only")
project_roles = [str(b.get("role")) for b in resources("google_project_iam_member").values()]
unconditional_roles = [str(b.get("role")) for b in resources("google_project_iam_member").values() if not b.get("condition")]
check(set(unconditional_roles) <= {"roles/bigquery.jobUser", "roles/monitoring.metricWriter"},
      f"no unconditional project-wide role beyond bigquery.jobUser and monitoring.metricWriter (the sidecar): {unconditional_roles}")
conditional_roles = {str(b.get("role")) for b in resources("google_project_iam_member").values() if b.get("condition")}
check(conditional_roles <= {"roles/datastore.user"},
      f"the only conditional project-wide role is roles/datastore.user (Firestore, one database): {sorted(conditional_roles)}")
check(not resources("google_project_iam_binding") and not resources("google_project_iam_policy"),
      "project IAM only through google_project_iam_member (non-authoritative, and what these checks read)")
for kind, rname, body in all_resources():
    if kind.startswith("google_bigquery_") and kind.endswith("_iam_member"):
        check(str(body.get("role")) not in ("roles/bigquery.dataEditor", "roles/bigquery.dataOwner", "roles/bigquery.admin"),
              f"{kind}.{rname}: {body.get('role')} can drop or re-create tables")
role = resources("google_project_iam_custom_role").get("table_writer")
check(role is not None, "google_project_iam_custom_role.table_writer is missing")
if role:
    perms = set(role.get("permissions") or [])
    check(perms and not perms & {"bigquery.tables.delete", "bigquery.tables.update", "bigquery.tables.create", "bigquery.tables.setIamPolicy"},
          f"the table writer role must hold row permissions only: {sorted(perms)}")
ledger_grant = resources("google_bigquery_table_iam_member").get("worker_ledger_writer")
check(ledger_grant and "google_project_iam_custom_role.table_writer" in str(ledger_grant.get("role"))
      and "processor_run_history" in str(ledger_grant.get("table_id")),
      "workers write the ledger through the row-only custom role")

table = resources("google_bigquery_table").get("processor_run_history")
check(table is not None, "the ledger table is missing")
if table:
    tp = first(table.get("time_partitioning"))
    check(tp.get("field") == "data_date", "ledger partitioned by data_date")
    check(table.get("clustering") == ["pipeline", "processor_name"], "ledger clustered by pipeline, processor_name")
    check("ledger_schema" in str(table.get("schema")), "ledger schema comes from ledger_schema.json")
    check(table.get("deletion_protection") is True, "the ledger table has deletion_protection")


# ── The graph: grants, APIs, the scheduler's [trigger] (also on the fixtures) ─────────────

REF = re.compile(r"\b(google_[a-z0-9_]+|time_sleep)\.([a-z0-9_]+)")
LOCAL_REF = re.compile(r"\blocal\.([a-z0-9_]+)")


def tree_parts(tree):
    res = {}
    for block in tree.get("resource", []):
        for kind, named in block.items():
            for name, body in named.items():
                res[(kind, name.strip('"'))] = body
    locs = {}
    for block in tree.get("locals", []):
        locs.update(block)
    vars_ = {}
    for block in tree.get("variable", []):
        for name, body in block.items():
            vars_[name.strip('"')] = body
    return res, locs, vars_


def grant_failures(tree):
    """Every table-level IAM grant must name, by reference, a table this module creates."""
    res, _, _ = tree_parts(tree)
    tables = {name for (kind, name) in res if kind == "google_bigquery_table"}
    out = []
    for (kind, name), body in res.items():
        if kind.startswith("google_bigquery_table_iam_"):
            m = re.search(r"google_bigquery_table\.([a-z0-9_]+)", str(body.get("table_id")))
            if not m or m.group(1) not in tables:
                out.append(f"{kind}.{name}: table_id {body.get('table_id')!r} is not a table this module creates "
                           "(a grant on a table made elsewhere fails at apply, or grants on someone else's table)")
    return out


def api_failures(tree):
    """Every resource whose API the module enables must be created after it: it reaches
    google_project_service.api through its references (project = local.project, another
    resource that does, or depends_on), and its API is in local.apis."""
    res, locs, _ = tree_parts(tree)
    apis_ = set(re.findall(r"[a-z]+\.googleapis\.com", str(locs.get("apis"))))
    edges = {}
    for (kind, name), body in res.items():
        text = str(body)
        edges[(kind, name)] = {(k, n) for k, n in REF.findall(text)} | {("local", n) for n in LOCAL_REF.findall(text)}
    for lname, expr in locs.items():
        text = str(expr)
        edges[("local", lname)] = {(k, n) for k, n in REF.findall(text)} | {("local", n) for n in LOCAL_REF.findall(text)}
    target = ("google_project_service", "api")

    def reaches(start):
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == target:
                return True
            if node in seen:
                continue
            seen.add(node)
            stack.extend(edges.get(node, ()))
        return False

    out = []
    for (kind, name) in res:
        if kind == "google_project_service":
            continue
        api = next((a for prefix, a in API_OF.items() if kind.startswith(prefix)), None)
        if api is None:
            continue
        if api not in apis_:
            out.append(f"{kind}.{name} needs {api} in local.apis")
        if not reaches((kind, name)):
            out.append(f"{kind}.{name} does not depend on google_project_service.api: it may be created before {api} is on")
    return out


def scheduler_failures(tree):
    """A Cloud Scheduler job that publishes a dateless trigger must be refused at plan time
    unless the pipeline file has [trigger] with the scheduler's time zone."""
    res, _, vars_ = tree_parts(tree)
    out = []
    jobs = [(n, b) for (k, n), b in res.items() if k == "google_cloud_scheduler_job" and b.get("pubsub_target")]
    for name, _body in jobs:
        def conds(var):
            return " ".join(str(v.get("condition")) for v in vars_.get(var, {}).get("validation", []))
        on_enable = conds("enable_scheduler")
        on_tz = conds("schedule_time_zone")
        if not ("trigger" in on_enable and "var.config_file" in on_enable and "regexall" in on_enable):
            out.append(f"google_cloud_scheduler_job.{name}: nothing refuses it when config_file has no [trigger] "
                       "(a validation of enable_scheduler over file(var.config_file))")
        if not ("trigger" in on_tz and "timezone" in on_tz and "var.schedule_time_zone" in on_tz and "var.config_file" in on_tz):
            out.append(f"google_cloud_scheduler_job.{name}: nothing refuses a [trigger] timezone other than schedule_time_zone")
    return out


def expand_locals(text, locs, depth=6):
    """A string attribute with every `${local.x}` replaced by x's expression, as Terraform
    evaluates it (a local that is one interpolation keeps its `${…}`)."""
    text = str(text)
    for _ in range(depth):
        new = re.sub(r"\$\{local\.([a-z0-9_]+)\}",
                     lambda m: locs[m.group(1)].strip() if isinstance(locs.get(m.group(1)), str) else m.group(0), text)
        if new == text:
            break
        text = new
    return text


def literal_set(expr):
    """The quoted words of a toset([...]) or list literal."""
    return set(re.findall(r"""['"]([a-z0-9_-]+)['"]""", str(expr)))


def firestore_db_failures(tree):
    """Every Firestore database is a named one (never "(default)") in Native mode."""
    res, _, vars_ = tree_parts(tree)
    out = []
    for (kind, name), body in res.items():
        if kind != "google_firestore_database":
            continue
        if str(body.get("type")) != "FIRESTORE_NATIVE":
            out.append(f"google_firestore_database.{name}: type {body.get('type')!r}, not FIRESTORE_NATIVE")
        db = str(body.get("name")).strip()
        m = re.fullmatch(r"\$\{var\.([a-z0-9_]+)\}", db)
        value = vars_.get(m.group(1), {}).get("default") if m else db
        if value == "(default)":
            out.append(f"google_firestore_database.{name}: the (default) database, not a named one of this module")
    return out


def ttl_failures(tree):
    """Every Firestore database has a TTL policy on expire_at for each collection group of the
    coordination documents (claims, events): a google_firestore_field with ttl_config {}."""
    res, locs, _ = tree_parts(tree)
    out = []
    for dbname in [n for (k, n) in res if k == "google_firestore_database"]:
        covered = set()
        for (k, _n), body in res.items():
            if k != "google_firestore_field" or f"google_firestore_database.{dbname}.name" not in str(body.get("database")):
                continue
            if "ttl_config" not in body or expand_locals(body.get("field"), locs) != "expire_at":
                continue
            collection = expand_locals(body.get("collection"), locs)
            if collection == "${each.key}":
                covered |= literal_set(expand_locals(body.get("for_each"), locs))
            else:
                covered.add(collection)
        missing = {"claims", "events"} - covered
        if missing:
            out.append(f"google_firestore_database.{dbname}: no TTL policy on expire_at for collection group(s) "
                       f"{sorted(missing)} (expired claims would never be deleted)")
    return out


# Firestore's documented per-database condition ("Configure per-database access permissions"):
# resource.name=="projects/PROJECT_ID/databases/DATABASE_ID", the database being one of the module's.
DB_CONDITION = re.compile(
    r'resource\.name\s*==\s*"projects/[^"/]+/databases/\$\{google_firestore_database\.([a-z0-9_]+)\.name\}"')


def datastore_grant_failures(tree):
    """Every Firestore grant (roles/datastore.*) is conditional on one database of this module:
    Firestore IAM is project-level, so without the condition a grant reaches every database of
    the project."""
    res, locs, _ = tree_parts(tree)
    dbs = {n for (k, n) in res if k == "google_firestore_database"}
    out = []
    for (kind, name), body in res.items():
        if not (kind.startswith("google_project_iam_") and "roles/datastore." in str(body.get("role"))):
            continue
        expr = expand_locals(first(body.get("condition")).get("expression", ""), locs).replace("\\", "").strip()
        m = DB_CONDITION.fullmatch(expr)
        if not m or m.group(1) not in dbs:
            out.append(f"{kind}.{name}: {body.get('role')} without the condition resource.name == "
                       f"\"projects/…/databases/<a database of this module>\" (got {expr or 'no condition'!r}): "
                       "it reaches every Firestore database of the project")
    return out


GRAPH_CHECKS = {"grant": grant_failures, "api": api_failures, "scheduler": scheduler_failures,
                "firestore-db": firestore_db_failures, "ttl": ttl_failures, "datastore-grant": datastore_grant_failures}
for what, fn in GRAPH_CHECKS.items():
    for failure in fn(tf):
        failures.append(f"graph ({what}): {failure}")

# The checks must be able to fail: each bad fixture fails its own check and only that one.
fixtures = root / "terraform/test-fixtures"
expected_fixture = {"good": set(), "bad-grant": {"grant"}, "bad-api": {"api"}, "bad-scheduler": {"scheduler"},
                    "bad-firestore-mode": {"firestore-db"}, "bad-ttl": {"ttl"}, "bad-datastore-grant": {"datastore-grant"}}
for fixture, expected in expected_fixture.items():
    fx = load(fixtures / fixture)
    failed = {what for what, fn in GRAPH_CHECKS.items() if fn(fx)}
    check(failed == expected, f"fixture {fixture}: graph checks that fail {sorted(failed)}, expected {sorted(expected)}")
    check(any(True for _ in (fixtures / fixture).glob("*.tf")), f"fixture {fixture} has no .tf files")


# ── The coordination store: claims and leases in Firestore ────────────────────────────────
# (The graph checks above also hold it to a named Native database, TTL on expire_at per
# collection group, and conditional grants; here: that it exists and is wired.)

databases = resources("google_firestore_database")
check(list(databases) == ["coordination"], f"one Firestore database, google_firestore_database.coordination (got {sorted(databases)})")
fdb = databases.get("coordination", {})
check(strip(str(fdb.get("name"))) == "var.firestore_database_id" and strip(str(fdb.get("location_id"))) == "var.firestore_location",
      "the Firestore database takes its id and location from var.firestore_database_id / var.firestore_location")
check(fdb.get("type") == "FIRESTORE_NATIVE", f"the Firestore database is in Native mode (got {fdb.get('type')!r})")
check(variables.get("firestore_database_id", {}).get("default") not in (None, "(default)"),
      "var.firestore_database_id defaults to a named database, never (default)")
check("firestore.googleapis.com" in apis, "firestore.googleapis.com must be in local.apis (and the database waits for it: graph check api)")
fields = resources("google_firestore_field")
ttl_field = fields.get("ttl", {})
check("ttl_config" in ttl_field and ttl_field.get("index_config") == [{}],
      "google_firestore_field.ttl: TTL on expire_at, and the field exempt from indexing (an empty index_config)")
unindexed = fields.get("unindexed", {})
check(unindexed.get("index_config") == [{}] and "local.firestore_unindexed" in str(unindexed.get("for_each")),
      "google_firestore_field.unindexed: every other field exempt from single-field indexing (empty index_config)")
check(literal_set(locals_.get("firestore_unindexed")) >= {"holder", "status", "renewed_at", "lease_secs", "published"}
      and literal_set(locals_.get("firestore_collections")) == {"claims", "events"},
      "every document field of claims and events is exempt from indexing (nothing queries them)")
check(env.get("PHASEGATE_COORDINATION") == "firestore", "workers: PHASEGATE_COORDINATION = \"firestore\"")
check(strip(str(env.get("PHASEGATE_FIRESTORE_DATABASE"))) == "google_firestore_database.coordination.name",
      "workers: PHASEGATE_FIRESTORE_DATABASE is the database's id (a reference: the service waits for the database)")
check("google_project_iam_member.worker_firestore_user" in str(run.get("depends_on") if run else ""),
      "the workers' services depend_on their Firestore grant (a first revision can claim)")
fgrant = resources("google_project_iam_member").get("worker_firestore_user", {})
check(fgrant.get("role") == "roles/datastore.user" and "toset(var.phases)" in str(fgrant.get("for_each"))
      and "google_service_account.worker[each.key]" in str(fgrant.get("member")),
      "each phase's worker holds roles/datastore.user (conditional: graph check datastore-grant)")
for kind, rname, body in all_resources():
    if kind.startswith("google_project_iam_") and "roles/datastore." in str(body.get("role")):
        check("google_service_account.worker" in str(body.get("member")),
              f"{kind}.{rname}: Firestore access is for the workers only (the freshness job reads the BigQuery ledger)")
freshness_env = str(resources("google_cloud_run_v2_job").get("freshness", {}))
check("PHASEGATE_COORDINATION" not in freshness_env,
      "the freshness job holds no Firestore grant, so it is not told to coordinate through Firestore")


# ── Every table the workers use is Terraform's ────────────────────────────────────────────

pipe_table = resources("google_bigquery_table").get("pipeline")
check(pipe_table is not None and "local.pipeline_tables" in str(pipe_table.get("for_each")),
      "google_bigquery_table.pipeline must create every output and source table")
if pipe_table:
    tp = first(pipe_table.get("time_partitioning"))
    check(tp.get("type") == "DAY" and "partition_field" in str(tp.get("field")), "pipeline tables: DAY partitions on partition_field")
    check("clustering" in str(pipe_table.get("clustering")), "pipeline tables: clustering from the declaration")
    check(pipe_table.get("deletion_protection") is True, "pipeline tables are deletion-protected")
check("var.output_tables" in str(locals_.get("output_grants")) and "var.source_tables" in str(locals_.get("pipeline_tables")),
      "local.pipeline_tables must hold output_tables and source_tables")
claims = resources("google_bigquery_table").get("processor_run_claims")
check(claims is not None and "claims_schema" in str(claims.get("schema")), "the claims table is Terraform's (claims_schema.json)")
for grant in ("worker_ledger_writer", "worker_claims_writer", "worker_output_writer"):
    check(grant in resources("google_bigquery_table_iam_member"), f"google_bigquery_table_iam_member.{grant} is missing")


def setup_tables(statements):
    """{table: (columns, partition column, clustering)} from CREATE TABLE statements:
    columns as [(column, TYPE, REQUIRED|NULLABLE)], then what follows the column list
    (`PARTITION BY col`, `CLUSTER BY a, b`, `OPTIONS(...)`)."""
    out = {}
    for st in statements:
        m = re.match(r"\s*CREATE TABLE IF NOT EXISTS \{dataset\}\.(\w+)\s*\(", st)
        if not m:
            continue
        depth, i = 1, m.end()
        while i < len(st) and depth:
            depth += {"(": 1, ")": -1}.get(st[i], 0)
            i += 1
        body, tail = st[m.end():i - 1], st[i:]
        cols = []
        for col in body.split(","):
            words = col.split()
            cols.append((words[0], words[1].upper(), "REQUIRED" if "NOT NULL" in col.upper() else "NULLABLE"))
        layout = re.match(r"\s*(?:PARTITION BY (\w+))?\s*(?:CLUSTER BY ([\w\s,]+?))?\s*(?:OPTIONS\s*\(.*\))?\s*$",
                          tail, re.S | re.I)
        check(layout is not None, f"setup.bigquery: cannot read what follows {m.group(1)}'s columns: {tail!r}")
        partition = layout.group(1) if layout else None
        clustering = [c.strip() for c in (layout.group(2) or "").split(",") if c.strip()] if layout else []
        out[m.group(1)] = (cols, partition, clustering)
    return out


example_setup = setup_tables(pipeline.get("setup", {}).get("bigquery", []))
schema_dir = root / "terraform/examples/daily/schemas"
example_main = (root / "terraform/examples/daily/main.tf").read_text()
for f in sorted(schema_dir.glob("*.json")):
    declared = [(c["name"], c["type"].upper(), c.get("mode", "NULLABLE").upper()) for c in json.loads(f.read_text())]
    columns = example_setup.get(f.stem, (None, None, None))[0]
    check(columns == declared,
          f"example schema {f.name} {declared} differs from pipeline.toml setup.bigquery {columns}")
    check(f"schemas/{f.name}" in example_main, f"terraform/examples/daily/main.tf does not declare {f.name}")
# The tables `init` creates on the emulators are laid out as Terraform creates them: the same
# DAY-partitioning column and clustering columns.
laid_out = set()
for m in re.finditer(r'(\w+)\s*=\s*\{\s*schema_file\s*=\s*"[^"]*",\s*partition_field\s*=\s*"(\w+)"'
                     r'(?:,\s*clustering\s*=\s*\[([^\]]*)\])?', example_main):
    table, partition = m.group(1), m.group(2)
    laid_out.add(table)
    clustering = re.findall(r'"(\w+)"', m.group(3) or "")
    _, setup_partition, setup_clustering = example_setup.get(table, (None, None, None))
    check((setup_partition, setup_clustering) == (partition, clustering),
          f"pipeline.toml setup.bigquery lays {table} out as PARTITION BY {setup_partition} CLUSTER BY "
          f"{setup_clustering}; terraform/examples/daily/main.tf as {partition}, {clustering}")
check(laid_out == {f.stem for f in schema_dir.glob("*.json")},
      f"terraform/examples/daily/main.tf: tables with a partition_field {sorted(laid_out)}, schemas "
      f"{sorted(f.stem for f in schema_dir.glob('*.json'))}")
output_table_names = {p.get("output", {}).get("table") for ph in pipeline["phases"] for p in ph.get("processors", []) if p.get("output")}
for t in sorted(t for t in output_table_names if t):
    check((schema_dir / f"{t}.json").exists(), f"output table {t} of the example pipeline has no schema in the example root module")


# ── The example's [trigger] agrees with its scheduler ─────────────────────────────────────

def tf_trigger_timezone(text):
    """The time zone as Terraform's validation reads it (the same regular expressions)."""
    if not re.search(r"(?m)^[ \t]*\[trigger\][ \t]*(#.*)?$", text):
        return None
    sec = re.search(r"(?ms)^[ \t]*\[trigger\][^\n]*\n(.*?)(?:^[ \t]*\[|\Z)", text)
    tz = sec and re.search(r"""(?m)^[ \t]*timezone[ \t]*=[ \t]*["']([^"']*)["']""", sec.group(1))
    return tz.group(1) if tz else ""


example_tz = re.search(r'schedule_time_zone\s*=\s*"([^"]+)"', example_main)
trigger = pipeline.get("trigger")
check(trigger is not None, "examples/nba/pipeline.toml has no [trigger]: the example's scheduler would be refused")
if trigger and example_tz:
    check(trigger.get("timezone") == example_tz.group(1),
          f"[trigger] timezone {trigger.get('timezone')} != the example's schedule_time_zone {example_tz.group(1)}")
    check(tf_trigger_timezone((root / "examples/nba/pipeline.toml").read_text()) == trigger.get("timezone"),
          "Terraform's regular-expression reading of [trigger] timezone disagrees with tomllib on the example")
for cfg in sorted((fixtures / "configs").glob("*.toml")):
    want = tomllib.loads(cfg.read_text()).get("trigger", {}).get("timezone")
    got = tf_trigger_timezone(cfg.read_text())
    check((got or None) == want, f"fixture {cfg.name}: regex reads [trigger] timezone {got!r}, tomllib {want!r}")


# ── Alerts on real symptoms; log-metric alerts wait for their metric ─────────────────────

sleep = resources("time_sleep").get("log_metrics")
check(sleep is not None and "var.log_metric_propagation_wait" in str(sleep.get("create_duration")),
      "time_sleep.log_metrics must wait var.log_metric_propagation_wait (provider issue 11102)")
for mname in resources("google_logging_metric"):
    check(f"google_logging_metric.{mname}" in str(sleep), f"time_sleep.log_metrics must follow google_logging_metric.{mname}")
for pname, policy in resources("google_monitoring_alert_policy").items():
    text = str(policy)
    if "logging.googleapis.com/user/" in text:
        check("time_sleep.log_metrics" in str(policy.get("depends_on")),
              f"alert policy {pname} uses a log-based metric and must depend_on time_sleep.log_metrics")
all_policies = str(resources("google_monitoring_alert_policy"))
check("oldest_unacked_message_age" in all_policies and "google_pubsub_subscription.push[each.key]" in all_policies,
      "an alert policy per push subscription on oldest_unacked_message_age")
check("google_logging_metric.refused" in all_policies, "an alert policy on refusals")
check("google_logging_metric.scheduler_failed" in all_policies, "an alert policy on Cloud Scheduler failures")
check("run.googleapis.com/job/completed_execution_count" in all_policies, "an alert policy on failed freshness executions")
refused = resources("google_logging_metric").get("refused")
check(refused is not None and "request refused" in str(refused.get("filter")) and "push summary" in str(refused.get("filter"))
      and "jsonPayload.outcome" in str(refused.get("label_extractors")),
      "the refusal metric counts the 'request refused' and 'push summary' lines by jsonPayload.outcome")
sched_metric = resources("google_logging_metric").get("scheduler_failed")
check(sched_metric is not None and "AttemptFinished" in str(sched_metric.get("filter")) and "severity>=ERROR" in str(sched_metric.get("filter")),
      "the scheduler metric counts failed AttemptFinished entries")
# Alert documentation names only fields the worker's JSON lines have (tracing-stackdriver
# camelCases event fields; httpRequest is promoted to the LogEntry).
KNOWN_FIELDS = {"jsonPayload.outcome", "jsonPayload.phase", "jsonPayload.dataDate", "jsonPayload.messageId",
                "jsonPayload.deliveryAttempt", "jsonPayload.reason", "jsonPayload.status", "jsonPayload.processor",
                "jsonPayload.error", "jsonPayload.debugInfo", "jsonPayload.message", "httpRequest.status"}
for pname, policy in resources("google_monitoring_alert_policy").items():
    doc = str(first(policy.get("documentation")).get("content"))
    for field in set(re.findall(r"\b(?:jsonPayload|httpRequest)\.[A-Za-z_@]+", doc)):
        check(field in KNOWN_FIELDS, f"alert policy {pname}: its documentation names {field}, which no log line has")
check("jsonPayload.data_date" not in all_policies, "log fields are camelCased: jsonPayload.dataDate, not data_date")


# ── Relay, freshness, metrics, registry ───────────────────────────────────────────────────

relay = resources("google_cloud_scheduler_job").get("relay")
check(relay is not None, "google_cloud_scheduler_job.relay (one per phase) is missing")
if relay:
    ht = first(relay.get("http_target"))
    check("/relay" in str(ht.get("uri")) and "google_cloud_run_v2_service.worker[each.key].uri" in str(ht.get("uri")),
          "the relay job POSTs the phase's own worker's /relay")
    oidc = first(ht.get("oidc_token"))
    check("google_service_account.scheduler" in str(oidc.get("service_account_email")) and "local.audience[each.key]" in str(oidc.get("audience")),
          "the relay job sends an OIDC token of the scheduler identity with the worker's audience")
    check("var.relay_schedule" in str(relay.get("schedule")), "the relay runs every var.relay_schedule")
check(variables.get("relay_schedule", {}).get("default") == "*/5 * * * *", "the relay runs every 5 minutes by default (owed events wait < 10 min)")
fjob = resources("google_cloud_run_v2_job").get("freshness")
check(fjob is not None and '"freshness"' in str(fjob).replace("'", '"'), "the freshness Cloud Run job runs `phasegate freshness`")
if fjob:
    check("google_secret_manager_secret.config" in str(fjob), "the freshness job mounts the module's pipeline-file secret")
fsched = resources("google_cloud_scheduler_job").get("freshness")
check(fsched is not None and ":run" in str(first(fsched.get("http_target")).get("uri")), "a scheduler job runs the freshness job")
for kind, name, body in all_resources():
    if kind in ("google_cloud_run_v2_service", "google_cloud_run_v2_job"):
        check("PHASEGATE_BIGQUERY_LOCATION" in str(body), f"{kind}.{name} must set PHASEGATE_BIGQUERY_LOCATION")
check("var.prometheus_sidecar_image" in str(tmpl) and "depends_on" in str(tmpl.get("dynamic")),
      "the worker runs the Managed Service for Prometheus sidecar after it starts")
check("roles/monitoring.metricWriter" in project_roles, "the sidecar writes metrics as the worker (roles/monitoring.metricWriter)")
check("google_artifact_registry_repository" in str(tf.get("resource")), "the module creates the image registry")


# ── Labels ────────────────────────────────────────────────────────────────────────────────

LABELLED = ("google_pubsub_topic", "google_pubsub_subscription", "google_cloud_run_v2_service",
            "google_bigquery_dataset", "google_bigquery_table", "google_secret_manager_secret",
            "google_cloud_run_v2_job", "google_artifact_registry_repository")
for kind, rname, body in all_resources():
    if kind in LABELLED:
        check("local.labels" in str(body.get("labels")), f"{kind}.{rname} must carry local.labels")


# ── Documentation ─────────────────────────────────────────────────────────────────────────

readme = (root / "terraform/README.md").read_text()
outputs = [n.strip('"') for block in tf.get("output", []) for n in block]
for var in variables:
    check(f"| `{var}` |" in readme, f"terraform/README.md: the inputs table lacks {var}")
for out in outputs:
    check(f"| `{out}` |" in readme, f"terraform/README.md: the outputs table lacks {out}")


# ── The example root module ───────────────────────────────────────────────────────────────

example = load(root / "terraform/examples/daily")
modules = {n.strip('"'): b for block in example.get("module", []) for n, b in block.items()}
check(any(b.get("source") == "../.." for b in modules.values()), "terraform/examples/daily must call the module (source = \"../..\")")
example_providers = {}
for block in example.get("terraform", []):
    for rp in block.get("required_providers", []):
        example_providers.update(rp)
check({"google", "google-beta"} <= set(example_providers), "the example root module must configure google and google-beta")

# ── The validation blocks, evaluated by Terraform itself ──────────────────────────────────
# A root module holding only variables.tf needs no provider, so `terraform plan` runs offline
# and evaluates every validation block: each case must be accepted or rejected as GCP would.

DIGEST = "us-central1-docker.pkg.dev/my-project/phasegate/phasegate@sha256:" + "a" * 64
CONFIGS = root / "terraform/test-fixtures/configs"
SCHEMAS = root / "terraform/examples/daily/schemas"
GOOD = {"project_id": "my-project", "image": DIGEST, "config_file": str(CONFIGS / "trigger-utc.toml")}


def table(name, partition="game_date", **extra):
    return {"schema_file": str(SCHEMAS / f"{name}.json"), "partition_field": partition, **extra}


EXAMPLE = str(root / "examples/nba/pipeline.toml")
VALIDATION_CASES = [
    ({}, None),
    ({"image": "us-docker.pkg.dev/p/r/phasegate:v1", "phases": ["a", "b-2"], "pipeline_name": "x"}, None),
    # 5 attempts spanning 90+180+360+600 = 1,230 s >= 600 + 360: enough.
    ({"max_delivery_attempts": 5, "retry_minimum_backoff_seconds": 90, "retry_maximum_backoff_seconds": 600}, None),
    # Dead-lettered before the holder's lease and the next relay could publish it.
    ({"max_delivery_attempts": 5, "retry_minimum_backoff_seconds": 0, "retry_maximum_backoff_seconds": 0},
     "must span at least processing_timeout_seconds"),
    ({"max_delivery_attempts": 5, "retry_minimum_backoff_seconds": 10}, "must span at least processing_timeout_seconds"),
    ({"max_delivery_attempts": 100, "processing_timeout_seconds": 10,
      "output_tables": {"raw": {"raw_player_boxscores": table("raw_player_boxscores", clustering=["team", "player"])}},
      "source_tables": {"team_schedule": table("team_schedule")}}, None),
    # The scheduler and the pipeline file's [trigger]: refused without it, or in another zone.
    ({"config_file": str(CONFIGS / "trigger-new-york.toml"), "schedule_time_zone": "America/New_York"}, None),
    ({"config_file": EXAMPLE, "schedule_time_zone": "America/New_York"}, None),  # what examples/daily deploys
    ({"config_file": str(CONFIGS / "no-trigger.toml"), "enable_scheduler": False}, None),
    ({"config_file": str(CONFIGS / "no-trigger.toml")}, "has no [trigger] section"),
    ({"config_file": str(CONFIGS / "trigger-new-york.toml")}, "schedule_time_zone must equal [trigger] timezone"),
    ({"config_file": EXAMPLE, "schedule_time_zone": "Etc/UTC"}, "schedule_time_zone must equal [trigger] timezone"),
    ({"pipeline_name": "abcdefghijklmnopqrst", "phases": ["a"]}, None),  # 20: pg-<20>-pusher is 30
    ({"project_id": "My_Project"}, "project_id must be"),
    ({"pipeline_name": "nba_2"}, "pipeline_name must be"),
    ({"pipeline_name": "abcdefghijklmnopqrstu"}, "pipeline_name must be"),  # 21
    ({"pipeline_name": "nba-"}, "pipeline_name must be"),
    ({"pipeline_name": "google"}, "pipeline_name must be"),
    ({"phases": ["raw", "Raw_2"]}, "Each phase name"),
    ({"phases": ["pusher"]}, "Each phase name"),
    ({"phases": ["raw", "raw"]}, "each once"),
    ({"phases": []}, "each once"),
    ({"phases": ["a" * 24]}, "Service account ids"),  # pg-nba- + 24 = 31
    ({"max_delivery_attempts": 4}, "max_delivery_attempts must be"),
    ({"max_delivery_attempts": 101}, "max_delivery_attempts must be"),
    ({"retry_minimum_backoff_seconds": 601}, "retry_minimum_backoff_seconds must be"),
    ({"retry_maximum_backoff_seconds": 601}, "retry_maximum_backoff_seconds must be"),
    ({"retry_minimum_backoff_seconds": 20, "retry_maximum_backoff_seconds": 10}, "must not exceed"),
    ({"processing_timeout_seconds": 9}, "processing_timeout_seconds must be"),
    ({"processing_timeout_seconds": 601}, "processing_timeout_seconds must be"),
    ({"cpu": "0.5"}, "cpu must be"),
    ({"memory": "512MB"}, "memory must be"),
    ({"worker_concurrency": 0}, "worker_concurrency must be"),
    ({"min_instances": 3, "max_instances": 2}, "max_instances must be"),
    ({"ingress": "all"}, "ingress must be"),
    ({"dataset_id": "my-dataset"}, "dataset_id must be"),
    ({"output_tables": {"nope": {"t": table("raw_player_boxscores")}}}, "output_tables keys"),
    ({"output_tables": {"raw": {"processor_run_history": table("raw_player_boxscores")}}}, "never the ledger"),
    ({"output_tables": {"raw": {"processor_run_claims": table("raw_player_boxscores")}}}, "never the ledger"),
    ({"output_tables": {"raw": {"t": table("raw_player_boxscores", partition="team")}}}, "partition_field is a DATE column"),
    ({"output_tables": {"raw": {"t": table("raw_player_boxscores", clustering=["nope"])}}}, "partition_field is a DATE column"),
    ({"output_tables": {"raw": {"t": {"schema_file": "/nonexistent.json", "partition_field": "game_date"}}}}, "partition_field is a DATE column"),
    ({"output_tables": {"raw": {"t": table("raw_player_boxscores")}, "analytics": {"t": table("raw_player_boxscores")}}}, "one writer per table"),
    ({"source_tables": {"t": table("team_schedule", partition="team")}}, "partition_field is a DATE column"),
    ({"output_tables": {"raw": {"t": table("raw_player_boxscores")}}, "source_tables": {"t": table("team_schedule")}}, "must not name the same table"),
    ({"phases": ["raw", "sched"]}, "Each phase name"),
    ({"relay_schedule": "*/5 * *"}, "relay_schedule must be"),
    ({"unacked_age_alert_seconds": 30}, "unacked_age_alert_seconds must be"),
    ({"log_metric_propagation_wait": "10m"}, "log_metric_propagation_wait must be"),
    ({"image_repository_id": "Phasegate"}, "image_repository_id must be"),
    ({"labels": {"Env": "prod"}}, "labels:"),
    ({"config_file": "/nonexistent/pipeline.toml"}, "config_file must be"),
    ({"image": "phasegate:latest"}, "image must be"),
    ({"schedule": "0 6 * *"}, "schedule must be"),
    ({"schedule_time_zone": "New York"}, "schedule_time_zone must be"),
    ({"notification_channels": ["oncall"]}, "notification_channels must be"),
    ({"config_mount_dir": "/etc"}, "config_mount_dir must be"),
    ({"firestore_database_id": "phasegate-nba", "firestore_location": "us-central1"}, None),
    ({"firestore_database_id": "abcd", "firestore_location": "eur3"}, None),  # 4: the shortest id
    ({"firestore_database_id": "(default)"}, "firestore_database_id must be"),
    ({"firestore_database_id": "abc"}, "firestore_database_id must be"),
    ({"firestore_database_id": "a" * 64}, "firestore_database_id must be"),
    ({"firestore_database_id": "Phasegate"}, "firestore_database_id must be"),
    ({"firestore_database_id": "phasegate-"}, "firestore_database_id must be"),
    ({"firestore_database_id": "abcdef12-3456-7890-abcd-ef1234567890"}, "firestore_database_id must be"),  # UUID-like
    ({"firestore_location": "US"}, "firestore_location must be"),
    ({"firestore_location": "nam 5"}, "firestore_location must be"),
]


def run_validation_cases():
    terraform = shutil.which("terraform")
    if terraform is None:
        return "skipped (no terraform binary)"
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(root / "terraform/variables.tf", tmp)
        subprocess.run([terraform, "init", "-input=false", "-no-color"], cwd=tmp, env=env,
                       check=True, capture_output=True)
        for overrides, expected in VALIDATION_CASES:
            values = {**GOOD, **overrides}
            (pathlib.Path(tmp) / "case.auto.tfvars.json").write_text(json.dumps(values))
            out = subprocess.run([terraform, "plan", "-input=false", "-no-color", "-lock=false", "-refresh=false"],
                                 cwd=tmp, env=env, capture_output=True, text=True)
            text = re.sub(r"\s+", " ", out.stdout + out.stderr)
            if expected is None:
                check(out.returncode == 0, f"terraform rejects valid inputs {overrides}: {text[-400:]}")
            else:
                check(out.returncode != 0 and expected in text,
                      f"terraform must reject {overrides} with {expected!r}; got: {text[-400:]}")
    return f"{len(VALIDATION_CASES)} cases"


validation_result = run_validation_cases()

if failures:
    print("terraform structure check FAILED:")
    for f in failures:
        print(" -", f)
    sys.exit(1)
print(f"terraform structure check: ok ({len(phases)} phases, {len(variables)} variables, "
      f"{len(apis)} APIs, {len(policies)} alert policy resources, config from Secret Manager, no baked config; "
      f"validation blocks under terraform plan: {validation_result})")
