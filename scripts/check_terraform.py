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
  own completion topic; no project-wide role beyond bigquery.jobUser; no BigQuery role that
  can drop or re-create a table (the ledger's writer role holds row permissions only);
- the ledger table is partitioned by data_date and clustered by pipeline, processor_name (its schema is
  compared with the code by tests/it/terraform_schema.rs);
- terraform/examples/daily is a root module calling this one.
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
    "output_tables": ["var.phases", "processor_run_history"],
    "config_file": ["file(var.config_file)"],
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

deploy_files = [p for p in (root / "deploy").iterdir() if p.is_file()]
check(not any(p.suffix in (".yaml", ".yml") for p in deploy_files), "deploy/ must not define services (Terraform owns them)")
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
      and all(s in str(rewrite.get("filter")) for s in ("UPDATE", "MERGE", "TRUNCATE_TABLE"))
      and "DELETE" not in str(rewrite.get("filter")),
      "the ledger-rewrite metric must count UPDATE/MERGE/TRUNCATE on the ledger (not DELETE: phasegate withdraws claims)")
metric = resources("google_logging_metric").get("blocked_or_failed")
check(metric is not None, "google_logging_metric.blocked_or_failed is missing")
if metric:
    mfilter = str(metric.get("filter")).replace("\\", "")  # drop HCL escapes
    check("jsonPayload.outcome" in mfilter and '"blocked"' in mfilter and '"failed"' in mfilter,
          f"the log metric must count jsonPayload.outcome blocked or failed (got {mfilter})")
    check("jsonPayload.phase" in str(metric.get("label_extractors")), "the log metric must label by jsonPayload.phase")


# ── Least privilege ───────────────────────────────────────────────────────────────────────

invoker = resources("google_cloud_run_v2_service_iam_member").get("invoker")
check(invoker and invoker.get("role") == "roles/run.invoker" and "google_service_account.pusher" in str(invoker.get("member")),
      "run.invoker only for the push identity")
pub = resources("google_pubsub_topic_iam_member").get("completion_publisher")
check(pub and "google_pubsub_topic.completion[each.key]" in str(pub.get("topic")) and "worker[each.key]" in str(pub.get("member")),
      "each worker publishes to its own completion topic only")
project_roles = [str(b.get("role")) for b in resources("google_project_iam_member").values()]
check(set(project_roles) <= {"roles/bigquery.jobUser"}, f"no project-wide role beyond bigquery.jobUser: {project_roles}")
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


# ── Labels ────────────────────────────────────────────────────────────────────────────────

LABELLED = ("google_pubsub_topic", "google_pubsub_subscription", "google_cloud_run_v2_service",
            "google_bigquery_dataset", "google_bigquery_table", "google_secret_manager_secret")
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
GOOD = {"project_id": "my-project", "image": DIGEST, "config_file": str(root / "examples/nba/pipeline.toml")}
VALIDATION_CASES = [
    ({}, None),
    ({"image": "us-docker.pkg.dev/p/r/phasegate:v1", "phases": ["a", "b-2"], "pipeline_name": "x"}, None),
    ({"max_delivery_attempts": 5, "retry_minimum_backoff_seconds": 0, "retry_maximum_backoff_seconds": 0}, None),
    ({"max_delivery_attempts": 100, "processing_timeout_seconds": 10, "output_tables": {"raw": ["raw_player_boxscores"]}}, None),
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
    ({"output_tables": {"nope": ["t"]}}, "output_tables keys"),
    ({"output_tables": {"raw": ["processor_run_history"]}}, "never the ledger"),
    ({"labels": {"Env": "prod"}}, "labels:"),
    ({"config_file": "/nonexistent/pipeline.toml"}, "config_file must be"),
    ({"image": "phasegate:latest"}, "image must be"),
    ({"schedule": "0 6 * *"}, "schedule must be"),
    ({"schedule_time_zone": "New York"}, "schedule_time_zone must be"),
    ({"notification_channels": ["oncall"]}, "notification_channels must be"),
    ({"config_mount_dir": "/etc"}, "config_mount_dir must be"),
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
