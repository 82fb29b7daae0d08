"""A model of BigQuery's documented limits, run as an HTTP proxy in front of bqemulator.

bqemulator runs every job synchronously, one at a time, and accepts what BigQuery refuses.
This proxy makes the jobs API behave as BigQuery documents (each rule cites its page), and
forwards everything else (datasets, tables) to bqemulator unchanged:

- jobs take time (PHASEGATE_BQ_MODEL_LATENCY_MS, e.g. "300-1500", real BigQuery's range;
  default "5-20" for CI), run in the background, and jobs.query / getQueryResults return
  `jobComplete: false` when a job outlives the wait (long jobs, polling, jobs.cancel,
  jobTimeoutMs);
- mutating DML (UPDATE, DELETE, MERGE, TRUNCATE) outside a transaction: at most 2 running
  per table, 20 pending, then an error; concurrent ones conflict ("Could not serialize
  access ... due to concurrent update") after BigQuery's own reruns;
- multi-statement transactions that mutate (update or delete rows in) the same table
  cannot run concurrently: the later to commit is cancelled ("Transaction is aborted due to
  concurrent update against table ..."); DML outside a transaction waits for them;
- requestId on jobs.query and the job id on jobs.insert make a retried request idempotent;
- job look-ups (jobs.get, getQueryResults, jobs.cancel) need the job's location unless it is
  the US or EU multi-region ("Not found: Job ...");
- transient errors (500/503 backendError, 403 rateLimitExceeded / jobRateLimitExceeded, ...)
  injected on a schedule by count, before a job runs or after it ran (the answer is lost),
  set by the admin API below or PHASEGATE_BQ_MODEL_FAULTS (the same JSON);
- bytes billed: each job is billed BigQuery's on-demand minimum, 10 MB per table each of its
  statements reads (bqemulator reports 0 bytes), reported as the job's totalBytesBilled and
  the `bytes_billed` counter, and a job whose maximumBytesBilled is below that fails with
  bytesBilledLimitExceeded before it runs.

What it cannot model: partition-level conflicts (conflicts are per table: stricter than
BigQuery on partitioned tables, the same on unpartitioned ones), the INSERT DML queue (1,500
immediate INSERTs per table per day, then 10 running / 100 queued), snapshot isolation inside
a transaction (bqemulator executes one job at a time), bytes beyond the billing minimum
(bqemulator reports 0: partition pruning cannot be seen in a bytes figure; dry runs are
forwarded and report 0), statement-level failures part-way through a script without a transaction (a model error
fails the whole job before any statement runs).

Admin API (not BigQuery's):
  POST   /phasegate-model/faults   {"rules": [RULE, ...]}  -> {"ids": [...]}
  DELETE /phasegate-model/faults[?dataset=D]
  GET    /phasegate-model/stats[?dataset=D]                 -> counters
  GET    /phasegate-model/health
RULE: {"dataset": D?, "match": SQL substring (case-insensitive)?, "endpoint": "query" |
"insert" | "getQueryResults" | "get" | "cancel" | "jobs" (query and insert, the default) |
"any", "kind": "http" (default) | "serialize" | "delay" | "warning" (the job succeeds, its
answers carry `errors` without an errorResult), "nth": [ordinals of matching
requests, 1-based]?, "every": N?, "times": max faults?, "status": 503, "reason":
"backendError", "message": ..., "phase": "before" | "after" (http: the job runs, its answer
is replaced by the error), "ms": delay, "wait_ms": how long jobs.query waits for a delayed
job before answering jobComplete=false}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# https://cloud.google.com/bigquery/docs/data-manipulation-language#update_delete_merge_dml_concurrency
# "BigQuery runs up to two of them concurrently, after which up to 20 are queued as
# PENDING ... Additional statements past the maximum queue length for each table fail."
DML_RUNNING = 2
DML_PENDING = 20
# Same page, "DML statement conflicts": conflicting mutating DML statements are rerun by
# BigQuery up to three times before they fail.
DML_RERUNS = int(os.environ.get("PHASEGATE_BQ_MODEL_DML_RERUNS", "3"))
# https://cloud.google.com/bigquery/docs/locations#specifying_your_location : job look-ups
# need the location except in the US and EU multi-regions.
LOCATION_FREE = {"us", "eu"}
# https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query#QueryRequest
# timeoutMs: "By default, this limit is 10 seconds"; the call may return earlier.
DEFAULT_WAIT_MS = 10_000

MUTATING = re.compile(
    r"\b(?:UPDATE|DELETE\s+FROM|DELETE|MERGE\s+INTO|MERGE|TRUNCATE\s+TABLE)\s+"
    r"((?:`[^`]+`|[A-Za-z_][\w-]*)(?:\s*\.\s*(?:`[^`]+`|[A-Za-z_][\w-]*))*)",
    re.IGNORECASE,
)
NOT_A_TABLE = {"set", "where", "when", "from", "using"}
BEGIN_TXN = re.compile(r"\bBEGIN(\s+TRANSACTION)?\s*;", re.IGNORECASE)
QUALIFIED = re.compile(r"`([^`]+)`\s*\.\s*([A-Za-z_][\w]*)\s*\.")
# https://cloud.google.com/bigquery/pricing#on_demand_pricing : "You are charged a minimum of
# 10 MB data processed per table referenced by the query, and with a minimum 10 MB data
# processed per query." bqemulator reports 0 bytes for every job, so the model bills each
# statement this minimum per table it reads — what BigQuery bills for tables whose scanned
# columns and partitions hold less than 10 MB, and a lower bound otherwise.
MIN_BILLED_PER_TABLE = 10 * 1024 * 1024
# A table as phasegate writes it: `project`.dataset.table or `project.dataset.table`.
TABLE_REF = (r"(?:`[^`.]+`\s*\.\s*[A-Za-z_]\w*\s*\.\s*[A-Za-z_]\w*"
             r"|`[^`.]+\.[^`.]+\.[^`.]+`)")
TABLES = re.compile(TABLE_REF)
# Tables a statement writes without reading them: an INSERT's target, a created table.
WRITTEN = re.compile(r"\b(?:INSERT\s+(?:INTO\s+)?|CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP\w*\s+)?"
                     r"TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?)(" + TABLE_REF + ")", re.IGNORECASE)


def now_ms() -> int:
    return int(time.time() * 1000)


def error_body(status: int, reason: str, message: str) -> dict[str, Any]:
    """BigQuery's error response: an ErrorProto list and a status word.
    https://cloud.google.com/bigquery/docs/error-messages"""
    words = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             409: "ALREADY_EXISTS", 500: "INTERNAL", 503: "UNAVAILABLE"}
    return {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}],
                      "status": words.get(status, "UNKNOWN")}}


class JobError(Exception):
    """A job that ended with an errorResult (status: the HTTP code jobs.query answers)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def proto(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "location": "", "debugInfo": ""}


def parse_latency(spec: str) -> tuple[int, int]:
    lo, _, hi = spec.partition("-")
    return int(lo), int(hi or lo)


def normalise_table(name: str, project: str, default_dataset: str | None) -> str:
    parts = [p.strip().strip("`") for p in re.split(r"\s*\.\s*", name.strip())]
    parts = [q for p in parts for q in p.split(".")]
    if len(parts) == 1 and default_dataset:
        parts = [project, default_dataset, parts[0]]
    elif len(parts) == 2:
        parts = [project, *parts]
    return ".".join(parts).lower()


def strip_literals(sql: str) -> str:
    """SQL without string literals and comments (so a keyword inside one is no statement)."""
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", sql)


def table_key(ref: str) -> str:
    return re.sub(r"[`\s]", "", ref).lower()


def billed_floor(sql: str) -> int:
    """The bytes BigQuery bills the job at least: per statement, the 10 MB minimum for each
    table it reads (MIN_BILLED_PER_TABLE); DDL and transaction control read none."""
    total = 0
    for statement in strip_literals(sql).split(";"):
        read = {table_key(t) for t in TABLES.findall(statement)}
        read -= {table_key(m.group(1)) for m in WRITTEN.finditer(statement)}
        total += MIN_BILLED_PER_TABLE * len(read)
    return total


@dataclass
class TableState:
    running: int = 0
    pending: int = 0
    version: int = 0
    txns: int = 0  # transactions mutating the table right now
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


@dataclass
class Job:
    id: str
    project: str
    location: str
    dataset: str | None
    sql: str
    forward: dict[str, Any]  # the jobs.query body sent to bqemulator
    latency_ms: int
    timeout_ms: int | None
    max_bytes_billed: int | None
    config: dict[str, Any]
    labels: dict[str, str]
    wait_ms: int | None = None
    state: str = "PENDING"
    created: int = field(default_factory=now_ms)
    started: int | None = None
    ended: int | None = None
    committing: bool = False
    result: dict[str, Any] | None = None
    error: JobError | None = None
    upstream_job: str | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    billed: int = 0
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {"state": self.state}
        if self.error is not None:
            s["errorResult"] = self.error.proto()
            s["errors"] = [self.error.proto()]
        elif self.warnings and self.state == "DONE":
            # https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobStatus : errors
            # "do not necessarily mean that the job has completed or was unsuccessful"; only
            # errorResult says it failed.
            s["errors"] = list(self.warnings)
        return s

    def reference(self) -> dict[str, str]:
        return {"projectId": self.project, "jobId": self.id, "location": self.location}

    def resource(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"creationTime": str(self.created)}
        if self.started:
            stats["startTime"] = str(self.started)
        if self.ended:
            stats["endTime"] = str(self.ended)
        if self.result is not None:
            stats["totalBytesProcessed"] = self.result.get("totalBytesProcessed", "0")
            stats["query"] = {"totalBytesProcessed": stats["totalBytesProcessed"],
                              "totalBytesBilled": str(self.billed)}
        return {"kind": "bigquery#job", "id": f"{self.project}:{self.location}.{self.id}",
                "jobReference": self.reference(), "configuration": self.config,
                "status": self.status(), "statistics": stats}


class Model:
    def __init__(self, upstream: str, latency: str, faults: str | None, seed: int):
        self.http = httpx.AsyncClient(base_url=f"http://{upstream}", timeout=None,
                                      limits=httpx.Limits(max_connections=64))
        self.latency = parse_latency(latency)
        self.rng = random.Random(seed)
        self.tables: dict[str, TableState] = {}
        self.jobs: dict[str, Job] = {}
        self.requests: dict[str, Job] = {}  # requestId -> job
        self.locations: dict[str, str] = {}  # "project.dataset" -> location
        self.commit = asyncio.Lock()  # one commit at a time: check, execute, bump versions
        self.rules: list[dict[str, Any]] = []
        self.rule_ids = itertools.count(1)
        self.stats: dict[str, dict[str, int]] = {}
        if faults:
            self.add_rules(json.loads(faults).get("rules", []))

    # ---- bookkeeping -------------------------------------------------------------------
    def count(self, dataset: str | None, what: str, n: int = 1) -> None:
        for key in {dataset or "", "*"}:
            d = self.stats.setdefault(key, {})
            d[what] = d.get(what, 0) + n

    def table(self, name: str) -> TableState:
        return self.tables.setdefault(name, TableState())

    def add_rules(self, rules: list[dict[str, Any]]) -> list[int]:
        ids = []
        for r in rules:
            r = dict(r)
            r["id"] = next(self.rule_ids)
            r["seen"] = 0
            r["fired"] = 0
            self.rules.append(r)
            ids.append(r["id"])
        return ids

    def fault(self, endpoint: str, dataset: str | None, sql: str, kinds: set[str]):
        """The first rule this request triggers (counting it against every matching rule)."""
        hit = None
        for r in self.rules:
            if r.get("kind", "http") not in kinds:
                continue
            want = r.get("endpoint", "jobs")
            if want != "any" and want != endpoint and not (
                    want == "jobs" and endpoint in ("query", "insert")):
                continue
            if r.get("dataset") and r["dataset"].lower() != (dataset or "").lower():
                continue
            if r.get("match") and r["match"].lower() not in sql.lower():
                continue
            r["seen"] += 1
            n = r["seen"]
            fires = (n in r["nth"]) if "nth" in r else (n % int(r.get("every", 1)) == 0)
            if fires and r["fired"] < int(r.get("times", 1 << 30)) and hit is None:
                r["fired"] += 1
                hit = r
        return hit

    def job_latency(self, extra: int = 0) -> int:
        lo, hi = self.latency
        return self.rng.randint(lo, hi) + extra

    def dataset_location(self, project: str, dataset: str | None) -> str:
        if not dataset:
            return "US"
        return self.locations.get(f"{project}.{dataset}".lower(), "US")

    # ---- the job's life ----------------------------------------------------------------
    async def run(self, job: Job) -> None:
        """Wait the job's latency (holding its DML slot or transaction claim), then commit:
        check conflicts, execute on bqemulator, record the new table versions."""
        sql = strip_literals(job.sql)
        txn = bool(BEGIN_TXN.search(sql))
        targets = sorted({normalise_table(m.group(1), job.project, job.dataset)
                          for m in MUTATING.finditer(sql)
                          if m.group(1).strip("`").lower() not in NOT_A_TABLE})
        try:
            if job.timeout_ms is not None:
                await asyncio.wait_for(self.execute(job, targets, txn), job.timeout_ms / 1000)
            else:
                await self.execute(job, targets, txn)
        except asyncio.TimeoutError:
            # https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfiguration
            # jobTimeoutMs: "If this time limit is exceeded, BigQuery will attempt to stop a
            # longer job" (a job already committing is not stopped here either).
            self.count(job.dataset, "timeouts")
            job.error = JobError(400, "timeout",
                                 f"Job timed out after {job.timeout_ms / 1000:.1f}s "
                                 "(jobTimeoutMs)")
        except asyncio.CancelledError:
            # https://cloud.google.com/bigquery/docs/error-messages : "stopped" — the job
            # was cancelled (jobs.cancel); nothing of it committed.
            self.count(job.dataset, "cancelled")
            job.error = JobError(400, "stopped", "Job execution was cancelled: "
                                 "User requested cancellation")
        except JobError as e:
            job.error = e
        except Exception as e:  # noqa: BLE001 — a model bug must still end the job
            job.error = JobError(500, "internalError", f"model: {e!r}")
        if job.error is None:
            job.billed = billed_floor(job.sql)
            self.count(job.dataset, "bytes_billed", job.billed)
            # What each kind of job bills, by phasegate's label (a processor's run script is
            # `phasegate_job: run`; gate, claim and ledger jobs carry none).
            kind = job.labels.get("phasegate_job", "other")
            self.count(job.dataset, f"bytes_billed_{kind}", job.billed)
            self.count(job.dataset, f"jobs_{kind}")
        job.state = "DONE"
        job.ended = now_ms()
        job.done.set()

    async def execute(self, job: Job, targets: list[str], txn: bool) -> None:
        job.state = "RUNNING"
        job.started = now_ms()
        billed = billed_floor(job.sql)
        if job.max_bytes_billed is not None and billed > job.max_bytes_billed:
            # https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfigurationQuery
            # maximumBytesBilled: "Queries that will have bytes billed beyond this limit will
            # fail (without incurring a charge)." The reason and message as BigQuery gives
            # them, as an HTTP 500 on the job's look-up as Google's client reference shows it
            # ("InternalServerError: 500 Query exceeded limit for bytes billed: 500. 10485760
            # or higher required.", bigframes ComputeOptions.maximum_bytes_billed): the
            # reason, not the status, says it is no transient error.
            self.count(job.dataset, "bytes_limit_refusals")
            raise JobError(500, "bytesBilledLimitExceeded",
                           f"Query exceeded limit for bytes billed: {job.max_bytes_billed}. "
                           f"{billed} or higher required.")
        if txn:
            await self.run_transaction(job, targets)
        elif targets:
            await self.run_mutating_dml(job, targets)
        else:
            await asyncio.sleep(job.latency_ms / 1000)
            async with self.commit:
                job.committing = True
                await self.send(job)

    async def run_transaction(self, job: Job, targets: list[str]) -> None:
        # https://cloud.google.com/bigquery/docs/transactions#transaction_concurrency
        # "If a transaction mutates (updates or deletes) rows in a table, then other
        # transactions or DML statements that mutate rows in the same table cannot run
        # concurrently. Conflicting transactions are cancelled. Conflicting DML statements
        # that run outside of a transaction are queued to run later."
        states = [self.table(t) for t in targets]
        versions = [s.version for s in states]
        for s in states:
            s.txns += 1
        try:
            await asyncio.sleep(job.latency_ms / 1000)
            async with self.commit:
                for t, s, v in zip(targets, states, versions):
                    if s.version != v:
                        self.count(job.dataset, "transactions_cancelled")
                        raise JobError(400, "invalidQuery",
                                       "Transaction is aborted due to concurrent update "
                                       f"against table {t}.")
                job.committing = True
                await self.send(job)
                for s in states:
                    s.version += 1
        finally:
            for s in states:
                s.txns -= 1
                async with s.changed:
                    s.changed.notify_all()

    async def run_mutating_dml(self, job: Job, targets: list[str]) -> None:
        states = [self.table(t) for t in targets]
        for t, s in zip(targets, states):
            if s.running + s.pending >= DML_RUNNING + DML_PENDING:
                # The queue is full: the statement fails (page cited at DML_PENDING).
                self.count(job.dataset, "dml_queue_full")
                raise JobError(400, "resourcesExceeded",
                               "Resources exceeded during query execution: Too many DML "
                               f"statements outstanding against table {t}, limit is "
                               f"{DML_PENDING}.")
        held: list[TableState] = []
        queued: list[TableState] = []
        try:
            for s in states:
                s.pending += 1
                queued.append(s)
                async with s.changed:
                    await s.changed.wait_for(lambda s=s: s.running < DML_RUNNING and s.txns == 0)
                s.pending -= 1
                queued.remove(s)
                s.running += 1
                held.append(s)
            forced = self.fault("query", job.dataset, job.sql, {"serialize"})
            clash: list[str] = []
            for _ in range(DML_RERUNS + 1):
                versions = [s.version for s in states]
                await asyncio.sleep(job.latency_ms / 1000)
                async with self.commit:
                    clash = [t for t, s, v in zip(targets, states, versions) if s.version != v]
                    if forced is not None:
                        clash = clash or targets
                    if not clash:
                        job.committing = True
                        await self.send(job)
                        for s in states:
                            s.version += 1
                        return
                if forced is not None:
                    break
                self.count(job.dataset, "dml_reruns")
            # https://cloud.google.com/bigquery/docs/data-manipulation-language#dml_statement_conflicts
            self.count(job.dataset, "serialize_errors")
            raise JobError(400, "invalidQuery",
                           f"Could not serialize access to table {clash[0]} due to "
                           "concurrent update")
        finally:
            for s in queued:
                s.pending -= 1
            for s in held:
                s.running -= 1
            for s in states:
                async with s.changed:
                    s.changed.notify_all()

    async def send(self, job: Job) -> None:
        resp = await self.http.post(f"/bigquery/v2/projects/{job.project}/queries",
                                    json=job.forward)
        body = resp.json()
        if resp.status_code >= 400:
            err = (body.get("error") or {})
            first = (err.get("errors") or [{}])[0]
            raise JobError(resp.status_code, first.get("reason", "invalidQuery"),
                           err.get("message", "bqemulator error"))
        if body.get("errors"):
            first = body["errors"][0]
            raise JobError(400, first.get("reason", "invalidQuery"),
                           first.get("message", "query failed"))
        job.upstream_job = (body.get("jobReference") or {}).get("jobId")
        job.result = body

    # ---- answers -----------------------------------------------------------------------
    def lookup(self, project: str, job_id: str, location: str | None) -> Job | JSONResponse:
        job = self.jobs.get(job_id)
        if job is None:
            return JSONResponse(error_body(404, "notFound", f"Not found: Job {project}:{job_id}"),
                                404)
        given = (location or "").lower()
        if (given and given != job.location.lower()) or (
                not given and job.location.lower() not in LOCATION_FREE):
            self.count(job.dataset, "location_refusals")
            return JSONResponse(error_body(404, "notFound", f"Not found: Job {project}:{job_id}"),
                                404)
        return job

    async def wait(self, job: Job, ms: int) -> bool:
        try:
            await asyncio.wait_for(job.done.wait(), ms / 1000)
        except asyncio.TimeoutError:
            pass
        return job.done.is_set()

    def query_answer(self, job: Job, kind: str) -> JSONResponse:
        if not job.done.is_set():
            return JSONResponse({"kind": kind, "jobReference": job.reference(),
                                 "jobComplete": False})
        if job.error is not None:
            # A failed job: BigQuery answers jobs.query / getQueryResults with the error.
            return JSONResponse(error_body(job.error.status, job.error.reason,
                                           job.error.message), job.error.status)
        body = dict(job.result or {})
        if job.warnings:
            # QueryResponse/GetQueryResultsResponse.errors: "the first errors or warnings
            # encountered during the running of the job" (REST reference, jobs.query).
            body["errors"] = list(job.warnings)
        body["kind"] = kind
        body["jobReference"] = job.reference()
        body["jobComplete"] = True
        return JSONResponse(body)


MODEL: Model | None = None


def model() -> Model:
    assert MODEL is not None
    return MODEL


def injected(rule: dict[str, Any]) -> JSONResponse:
    status = int(rule.get("status", 503))
    reason = rule.get("reason", "backendError")
    message = rule.get("message", {
        "backendError": "Error encountered during execution. Retrying may solve the problem.",
        "internalError": "An internal error occurred and the request could not be completed.",
        "rateLimitExceeded": "Exceeded rate limits: too many api requests per user per method "
                             "for this user_method.",
        "jobRateLimitExceeded": "Exceeded rate limits: too many concurrent queries for this "
                                "project_and_region.",
    }.get(reason, reason))
    return JSONResponse(error_body(status, reason, message), status)


def default_dataset(body: dict[str, Any], sql: str) -> str | None:
    ds = (body.get("defaultDataset") or {}).get("datasetId")
    if ds:
        return ds
    m = QUALIFIED.search(sql)
    return m.group(2) if m else None


async def start_job(project: str, job_id: str, q: dict[str, Any], location: str | None,
                    timeout_ms: int | None, config: dict[str, Any], labels: dict[str, str],
                    endpoint: str) -> Job | JSONResponse:
    m = model()
    sql = q.get("query", "")
    dataset = default_dataset(q, sql)
    ds_location = m.dataset_location(project, dataset)
    if location and location.lower() != ds_location.lower():
        # https://cloud.google.com/bigquery/docs/locations : a job runs where its data is.
        m.count(dataset, "location_refusals")
        return JSONResponse(error_body(404, "notFound", f"Not found: Dataset {project}:"
                                       f"{dataset} was not found in location {location}"), 404)
    delay = m.fault(endpoint, dataset, sql, {"delay"})
    warning = m.fault(endpoint, dataset, sql, {"warning"})
    limit = q.get("maximumBytesBilled")
    forward = {k: v for k, v in q.items()
               if k in ("query", "useLegacySql", "parameterMode", "queryParameters",
                        "defaultDataset", "maxResults", "dryRun")}
    forward.setdefault("useLegacySql", False)
    job = Job(id=job_id, project=project, location=location or ds_location, dataset=dataset,
              sql=sql, forward=forward, latency_ms=m.job_latency(int((delay or {}).get("ms", 0))),
              timeout_ms=timeout_ms, max_bytes_billed=int(limit) if limit else None,
              config=config, labels=labels,
              wait_ms=(delay or {}).get("wait_ms"))
    if warning is not None:
        m.count(dataset, "warnings")
        job.warnings = [{"reason": warning.get("reason", "invalid"), "location": "",
                         "message": warning.get("message", "a warning of a job that succeeded"),
                         "debugInfo": ""}]
    m.jobs[job_id] = job
    m.count(dataset, "jobs")
    if labels:
        m.count(dataset, "labelled_jobs")
    job.task = asyncio.create_task(m.run(job))
    return job


# ---- BigQuery's routes ------------------------------------------------------------------
async def jobs_query(request: Request) -> Response:
    m = model()
    project = request.path_params["project"]
    body = await request.json()
    sql = body.get("query", "")
    dataset = default_dataset(body, sql)
    if body.get("dryRun"):
        return await forward(request)
    rule = m.fault("query", dataset, sql, {"http"})
    if rule is not None and rule.get("phase", "before") == "before":
        m.count(dataset, "faults_injected")
        return injected(rule)
    request_id = body.get("requestId")
    # https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query#QueryRequest
    # requestId: a retried request with the same id is not run again; its job's result is
    # returned.
    job = m.requests.get(request_id) if request_id else None
    if job is not None:
        m.count(dataset, "request_id_reused")
    else:
        started = await start_job(project, f"job_{uuid.uuid4().hex[:20]}", body,
                                  body.get("location"), None, {"query": body},
                                  body.get("labels") or {}, "query")
        if isinstance(started, JSONResponse):
            return started
        job = started
        if request_id:
            m.requests[request_id] = job
    wait = int(body.get("timeoutMs", DEFAULT_WAIT_MS))
    if job.wait_ms is not None:
        wait = min(wait, int(job.wait_ms))
    await m.wait(job, wait)
    if rule is not None:  # phase "after": the job ran; its answer is lost
        await job.done.wait()
        m.count(dataset, "faults_injected")
        return injected(rule)
    return m.query_answer(job, "bigquery#queryResponse")


async def jobs_insert(request: Request) -> Response:
    m = model()
    project = request.path_params["project"]
    raw = await request.body()
    body = json.loads(raw or b"{}")
    config = body.get("configuration") or {}
    if "query" not in config or config.get("dryRun"):
        return await forward(request, raw)
    q = config["query"]
    sql = q.get("query", "")
    dataset = default_dataset(q, sql)
    rule = m.fault("insert", dataset, sql, {"http"})
    if rule is not None and rule.get("phase", "before") == "before":
        m.count(dataset, "faults_injected")
        return injected(rule)
    ref = body.get("jobReference") or {}
    job_id = ref.get("jobId") or f"job_{uuid.uuid4().hex[:20]}"
    if job_id in m.jobs:
        # https://cloud.google.com/bigquery/docs/error-messages : duplicate (409) — a job
        # with this id exists; the retry of an insert whose answer was lost lands here.
        m.count(dataset, "duplicate_job_ids")
        return JSONResponse(error_body(409, "duplicate",
                                       f"Already Exists: Job {project}:{job_id}"), 409)
    timeout = config.get("jobTimeoutMs")
    started = await start_job(project, job_id, q, ref.get("location"),
                              int(timeout) if timeout else None, config,
                              config.get("labels") or {}, "insert")
    if isinstance(started, JSONResponse):
        return started
    if rule is not None:
        await started.done.wait()
        m.count(dataset, "faults_injected")
        return injected(rule)
    return JSONResponse(started.resource())


async def get_query_results(request: Request) -> Response:
    m = model()
    project, job_id = request.path_params["project"], request.path_params["job"]
    if job_id not in m.jobs:
        return await forward(request)
    found = m.lookup(project, job_id, request.query_params.get("location"))
    if isinstance(found, JSONResponse):
        return found
    job = found
    rule = m.fault("getQueryResults", job.dataset, job.sql, {"http"})
    if rule is not None:
        m.count(job.dataset, "faults_injected")
        return injected(rule)
    wait = int(request.query_params.get("timeoutMs", DEFAULT_WAIT_MS))
    if job.wait_ms is not None:
        wait = min(wait, int(job.wait_ms))
    await m.wait(job, wait)
    token = request.query_params.get("pageToken")
    if token and job.done.is_set() and job.error is None and job.upstream_job:
        params = {k: v for k, v in request.query_params.items() if k != "location"}
        resp = await m.http.get(f"/bigquery/v2/projects/{project}/queries/{job.upstream_job}",
                                params=params)
        body = resp.json()
        if resp.status_code < 400:
            body["jobReference"] = job.reference()
        return JSONResponse(body, resp.status_code)
    return m.query_answer(job, "bigquery#getQueryResultsResponse")


async def jobs_get(request: Request) -> Response:
    m = model()
    project, job_id = request.path_params["project"], request.path_params["job"]
    if job_id not in m.jobs:
        return await forward(request)
    found = m.lookup(project, job_id, request.query_params.get("location"))
    if isinstance(found, JSONResponse):
        return found
    rule = m.fault("get", found.dataset, found.sql, {"http"})
    if rule is not None:
        m.count(found.dataset, "faults_injected")
        return injected(rule)
    return JSONResponse(found.resource())


async def jobs_cancel(request: Request) -> Response:
    # https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/cancel : "Requests that
    # a job be cancelled. This call will return immediately" — best effort: a job already
    # committing finishes.
    m = model()
    project, job_id = request.path_params["project"], request.path_params["job"]
    if job_id not in m.jobs:
        return await forward(request)
    found = m.lookup(project, job_id, request.query_params.get("location"))
    if isinstance(found, JSONResponse):
        return found
    job = found
    m.count(job.dataset, "cancel_requests")
    rule = m.fault("cancel", job.dataset, job.sql, {"http"})
    if rule is not None:
        # The cancel request itself failed (a transient error): the job runs on, as a job
        # already committing does ("best effort", same page).
        m.count(job.dataset, "faults_injected")
        return injected(rule)
    if not job.done.is_set() and not job.committing and job.task is not None:
        job.task.cancel()
        try:
            await asyncio.wait_for(job.done.wait(), 5)
        except asyncio.TimeoutError:
            pass
    return JSONResponse({"kind": "bigquery#jobCancelResponse", "job": job.resource()})


async def datasets_insert(request: Request) -> Response:
    m = model()
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
        ref = body.get("datasetReference") or {}
        project = ref.get("projectId") or request.path_params["project"]
        if ref.get("datasetId"):
            m.locations[f"{project}.{ref['datasetId']}".lower()] = body.get("location") or "US"
    except (ValueError, AttributeError):
        pass
    return await forward(request, raw)


async def forward(request: Request, raw: bytes | None = None) -> Response:
    m = model()
    body = raw if raw is not None else await request.body()
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in ("host", "content-length", "connection")}
    resp = await m.http.request(request.method, request.url.path,
                                params=list(request.query_params.multi_items()),
                                content=body, headers=headers)
    out_headers = {k: v for k, v in resp.headers.items()
                   if k.lower() in ("content-type",)}
    return Response(resp.content, resp.status_code, headers=out_headers)


# ---- admin ------------------------------------------------------------------------------
async def admin_faults(request: Request) -> Response:
    m = model()
    if request.method == "POST":
        body = await request.json()
        return JSONResponse({"ids": m.add_rules(body.get("rules", []))})
    dataset = request.query_params.get("dataset")
    m.rules = [r for r in m.rules if dataset and r.get("dataset") != dataset]
    return JSONResponse({"rules": len(m.rules)})


async def admin_stats(request: Request) -> Response:
    m = model()
    dataset = request.query_params.get("dataset") or "*"
    return JSONResponse(m.stats.get(dataset, {}))


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


V2 = "/bigquery/v2/projects/{project}"
ROUTES = [
    Route("/phasegate-model/health", health),
    Route("/phasegate-model/faults", admin_faults, methods=["POST", "DELETE"]),
    Route("/phasegate-model/stats", admin_stats),
    Route(f"{V2}/queries", jobs_query, methods=["POST"]),
    Route(f"{V2}/queries/{{job}}", get_query_results, methods=["GET"]),
    Route(f"{V2}/jobs", jobs_insert, methods=["POST"]),
    Route(f"{V2}/jobs/{{job}}", jobs_get, methods=["GET"]),
    Route(f"{V2}/jobs/{{job}}/cancel", jobs_cancel, methods=["POST"]),
    Route(f"{V2}/datasets", datasets_insert, methods=["POST"]),
    Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
]


def main() -> None:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="bqemulator's host:port")
    args = ap.parse_args()
    MODEL = Model(args.upstream,
                  os.environ.get("PHASEGATE_BQ_MODEL_LATENCY_MS", "5-20"),
                  os.environ.get("PHASEGATE_BQ_MODEL_FAULTS"),
                  int(os.environ.get("PHASEGATE_BQ_MODEL_SEED", "1")))
    app = Starlette(routes=ROUTES)
    # keep-alive longer than the client's idle pool timeout (2 s), like bqemulator's 5 s.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                timeout_keep_alive=5)


if __name__ == "__main__":
    main()
