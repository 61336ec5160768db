// Peer benchmark: keel-bench's `delivery` and `drain` jobs with Graphile Worker
// (Node.js, npm package `graphile-worker`, pinned in package.json).
//
//   node peer.mjs delivery --url URL [--events N] [--producers P] [--mode defaults|batched]
//   node peer.mjs drain    --url URL [--events N] [--mode defaults|batched]
//
// The URL names a fresh, empty database. The last line of stdout is
//   PEER graphile events_per_s=<float> events=<N> producers=<P> seconds=<float> mode=<mode> [enqueue=in-transaction]
// Progress goes to stderr; on failure `error: …` on stderr and exit status 1.
//
// delivery (the job of common/peer.rs, which the Rust peers share):
// 1. Graphile's migrations (`runMigrations`), then `bench_rows` (one row per
//    producer, ids 0..P) and `bench_effects(seq)`.
// 2. The worker starts in-process (`run`). Its task `effect` inserts
//    `bench_effects(seq)` through `helpers.withPgClient` (the worker's pool).
//    Graphile cannot complete a job in the task's transaction: it deletes the
//    job (`complete_jobs`) afterwards, in a statement of its own, so the effect
//    and the completion are NOT atomic (as with apalis; sqlxmq and Keel commit
//    them together).
// 3. Timer starts. P producers (one connection each) run their share of N
//    transactions: BEGIN; UPDATE bench_rows SET n = n + 1 WHERE id = $p;
//    SELECT graphile_worker.add_job('effect', {"seq": i}); COMMIT. add_job is
//    Graphile's documented SQL API, so the job is enqueued in the producing
//    transaction.
// 4. Timer stops when count(*) FROM bench_effects = N (polled every 10 ms,
//    error after 300 s); it must then be exactly N, and sum(n) of bench_rows N.
//    How long after that every job was also completed (deleted) is printed too.
//
// drain:
// 1. Graphile's migrations, then N jobs `noop` in one `graphile_worker.add_jobs`
//    call (its documented bulk insert), then VACUUM ANALYZE and CHECKPOINT, as
//    keel-bench seeds Keel's backlog. Not timed.
// 2. Timer starts; the worker starts (`run`) with a task that does nothing.
// 3. Timer stops when graphile_worker._private_jobs (the table behind the
//    `jobs` view; completed jobs are deleted) is empty: checked every 10 ms
//    once the task has run N times (before that it cannot be empty), as Keel's
//    own wait checks its outbox after its running deliveries. Error after 300 s.
//
// Modes:
// - defaults: Graphile's default options except the concurrency, which is set
//   to 16 jobs at once, the W the Rust peers run with (common/peer.rs,
//   DEFAULT_WORKERS of sqlxmq and apalis). Graphile's own default is 1 job at a
//   time, which would measure a single-threaded consumer. The pool follows
//   Graphile's advice for a concurrency above 8: maxPoolSize = concurrency + 2.
// - batched: the options of Graphile's performance page
//   (https://worker.graphile.org/docs/performance): localQueue { size: 500 },
//   completeJobBatchDelay 0, failJobBatchDelay 0, with its concurrentJobs 24
//   and maxPoolSize 25. The tasks here are short and Node runs them on one
//   thread, so concurrency only bounds the jobs awaiting the database; 24 is
//   the documented setting, and was as good as 8 or 16 on the 2-core machine
//   (see crates/bench/peers/README.md).
// `--concurrency C` overrides the mode's concurrency (pool C + 2), to try settings.

import { Logger, run, runMigrations } from "graphile-worker";
import pg from "pg";

const POLL_MS = 10;
const GIVE_UP_MS = 300_000;
/** The Rust peers' default W (most handlers in flight). */
const PEER_WORKERS = 16;

const MODES = {
  defaults: { concurrency: PEER_WORKERS, maxPoolSize: PEER_WORKERS + 2, options: {} },
  batched: {
    concurrency: 24,
    maxPoolSize: 25,
    options: {
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
};

const USAGE =
  "usage: node peer.mjs delivery|drain --url POSTGRES_URL [--events N (20000)] [--producers P (8)] [--mode defaults|batched] [--concurrency C]";

function parseArgs(argv) {
  const args = { scenario: null, url: null, events: 20_000, producers: 8, mode: "defaults", concurrency: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    const count = () => {
      const text = value();
      const n = Number(text);
      if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${flag}: \`${text}\` is not a positive integer`);
      return n;
    };
    switch (flag) {
      case "--url": args.url = value(); break;
      case "--events": args.events = count(); break;
      case "--producers": args.producers = count(); break;
      case "--concurrency": args.concurrency = count(); break;
      case "--mode": args.mode = value(); break;
      case "-h":
      case "--help":
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        if (flag.startsWith("-") || args.scenario) throw new Error(`unknown argument ${flag}`);
        args.scenario = flag;
    }
  }
  if (args.scenario !== "delivery" && args.scenario !== "drain") {
    throw new Error(`name a scenario, delivery or drain\n${USAGE}`);
  }
  if (!args.url) throw new Error(`--url is required\n${USAGE}`);
  if (!(args.mode in MODES)) throw new Error(`--mode: \`${args.mode}\` is neither defaults nor batched`);
  return args;
}

/** Graphile's warnings and errors to stderr; its info and debug messages dropped. */
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
});

/** The worker's options for `mode` (the `preset.worker` of Graphile's `run`). */
function workerOptions(args) {
  const mode = MODES[args.mode];
  const concurrentJobs = args.concurrency ?? mode.concurrency;
  return {
    connectionString: args.url,
    concurrentJobs,
    // Graphile's advice: 10 or concurrentJobs + 2, whichever is larger.
    maxPoolSize: args.concurrency ? Math.max(10, concurrentJobs + 2) : mode.maxPoolSize,
    ...mode.options,
  };
}

function describe(options) {
  const { connectionString: _, ...shown } = options;
  return JSON.stringify(shown);
}

async function connect(url) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return client;
}

async function scalar(client, text, values) {
  const { rows } = await client.query({ text, values, rowMode: "array" });
  return rows[0][0];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts the worker; rejects `failure` (checked by the waits) when a job fails
 * or the worker dies, so that a broken run fails at once rather than after 300 s.
 */
async function startWorker(args, taskList, failure) {
  const options = workerOptions(args);
  const runner = await run({ taskList, logger, noHandleSignals: true, preset: { worker: options } });
  for (const event of ["job:error", "job:failed", "pool:fatalError", "worker:fatalError"]) {
    runner.events.on(event, (e) => {
      failure.error ??= new Error(`graphile-worker ${event}: ${e?.error?.message ?? e?.error ?? "?"}`);
    });
  }
  runner.promise.catch((e) => {
    failure.error ??= e;
  });
  return { runner, options };
}

/** Polls `done()` every 10 ms until true; fails on `failure.error` or after 300 s. */
async function waitUntil(what, failure, done) {
  const deadline = performance.now() + GIVE_UP_MS;
  for (;;) {
    if (failure.error) throw failure.error;
    if (await done()) return;
    if (performance.now() > deadline) throw new Error(`gave up after ${GIVE_UP_MS / 1000}s waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

const JOBS_LEFT = "SELECT count(*)::int FROM graphile_worker._private_jobs";
const ANY_JOB_LEFT = "SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)";

async function delivery(args) {
  const { url, events, producers } = args;
  await runMigrations({ connectionString: url, logger });
  const admin = await connect(url);
  await admin.query(
    `CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
     CREATE TABLE bench_effects (seq BIGINT PRIMARY KEY);`,
  );
  await admin.query("INSERT INTO bench_rows (id, n) SELECT g, 0 FROM generate_series(0, $1::bigint - 1) AS g", [
    producers,
  ]);

  const failure = { error: null };
  const taskList = {
    effect: async (payload, helpers) => {
      await helpers.withPgClient((client) =>
        client.query({ name: "effect", text: "INSERT INTO bench_effects (seq) VALUES ($1)", values: [payload.seq] }),
      );
    },
  };
  const { runner, options } = await startWorker(args, taskList, failure);
  const clients = await Promise.all(Array.from({ length: producers }, () => connect(url)));

  const started = performance.now();
  let producedAt = null;
  const per = Math.floor(events / producers);
  const extra = events % producers;
  let first = 0;
  const producing = clients.map((client, producer) => {
    const count = per + (producer < extra ? 1 : 0);
    const start = first;
    first += count;
    return (async () => {
      for (let seq = start; seq < start + count; seq++) {
        await client.query("BEGIN");
        await client.query({
          name: "touch",
          text: "UPDATE bench_rows SET n = n + 1 WHERE id = $1",
          values: [producer],
        });
        await client.query({
          name: "enqueue",
          text: "SELECT 1 FROM graphile_worker.add_job('effect', json_build_object('seq', $1::bigint))",
          values: [seq],
        });
        await client.query("COMMIT");
      }
    })();
  });
  Promise.all(producing).then(
    () => {
      producedAt = performance.now();
    },
    (e) => {
      failure.error ??= e;
    },
  );

  let effects = 0;
  await waitUntil(`${events} effects`, failure, async () => {
    effects = await scalar(admin, "SELECT count(*)::int FROM bench_effects");
    return effects >= events;
  });
  const elapsed = performance.now() - started;
  await Promise.all(producing);
  if (effects !== events) throw new Error(`bench_effects has ${effects} rows, expected ${events}`);
  const updates = Number(await scalar(admin, "SELECT COALESCE(sum(n), 0)::bigint FROM bench_rows"));
  if (updates !== events) throw new Error(`sum(n) of bench_rows is ${updates}, expected ${events}`);
  await waitUntil("every job completed", failure, async () => !(await scalar(admin, ANY_JOB_LEFT)));
  const completed = performance.now() - started;

  await runner.stop();
  await Promise.all(clients.map((c) => c.end()));
  await admin.end();
  console.error(
    `producers committed ${events} transactions in ${((producedAt - started) / 1000).toFixed(3)}s; ` +
      `last effect after ${(elapsed / 1000).toFixed(3)}s; every job completed after ${(completed / 1000).toFixed(3)}s`,
  );
  report(args, elapsed, `graphile-worker 0.17, ${describe(options)}`, "enqueue=in-transaction");
}

async function drain(args) {
  const { url, events } = args;
  await runMigrations({ connectionString: url, logger });
  const admin = await connect(url);
  const seeded = await scalar(
    admin,
    `SELECT count(*)::int FROM graphile_worker.add_jobs(ARRAY(
         SELECT ROW('noop', json_build_object('seq', g), NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
         FROM generate_series(1, $1::int) AS g))`,
    [events],
  );
  if (seeded !== events) throw new Error(`add_jobs added ${seeded} jobs, expected ${events}`);
  for (const statement of ["VACUUM ANALYZE", "CHECKPOINT"]) await admin.query(statement);

  const failure = { error: null };
  let handled = 0;
  const taskList = {
    noop: async () => {
      handled++;
    },
  };
  const started = performance.now();
  const { runner, options } = await startWorker(args, taskList, failure);
  await waitUntil(`${events} jobs done`, failure, async () => handled >= events && !(await scalar(admin, ANY_JOB_LEFT)));
  const elapsed = performance.now() - started;
  await runner.stop();
  const left = await scalar(admin, JOBS_LEFT);
  await admin.end();
  if (left !== 0 || handled !== events) {
    throw new Error(`${handled} jobs run and ${left} left, expected ${events} and 0`);
  }
  console.error(`${events} jobs run and deleted in ${(elapsed / 1000).toFixed(3)}s`);
  report({ ...args, producers: 0 }, elapsed, `graphile-worker 0.17, ${describe(options)}`, null);
}

function report(args, elapsedMs, settings, extra) {
  const seconds = elapsedMs / 1000;
  const rate = args.events / seconds;
  console.log(
    `graphile (${args.scenario}, ${args.mode}): ${args.events} events in ${seconds.toFixed(3)}s = ${rate.toFixed(1)}/s (${settings})`,
  );
  const fields = [
    `events_per_s=${rate.toFixed(1)}`,
    `events=${args.events}`,
    `producers=${args.producers}`,
    `seconds=${seconds.toFixed(3)}`,
    `mode=${args.mode}`,
  ];
  if (extra) fields.push(extra);
  console.log(`PEER graphile ${fields.join(" ")}`);
}

try {
  const args = parseArgs(process.argv.slice(2));
  await (args.scenario === "delivery" ? delivery(args) : drain(args));
  process.exit(0);
} catch (error) {
  console.error(`error: ${error?.message ?? error}`);
  process.exit(1);
}
