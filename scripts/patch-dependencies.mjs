#!/usr/bin/env node
// Mends known defects of a pinned dependency in node_modules; package.json's postinstall
// runs it after `npm install` and `bun install`. Plain Node, no dependencies: it runs before
// anything else is known to work. Idempotent: a mended file is left as it is. A dependency
// at another version, or a file that does not read as expected, fails the install with a
// message, so that bumping the pin means checking whether the defects are still there.
//
// postgres 3.4.9 (src/connection.js, and its cjs and cf builds), where PostgreSQL ends a
// connection under load (a restart, a failover, pg_terminate_backend):
//
// 1. A stale write timer (upstream: LanternOps/breeze#3225, porsager/postgres#1215). A
//    connection buffers small writes and flushes them from a setImmediate, scheduled only
//    while `nextWriteTimer` is null. closed() and terminate() cancel that immediate but
//    leave `nextWriteTimer` and the buffered bytes set, so the connection's next socket
//    never flushes a small write: its StartupMessage waits out `connect_timeout` (tern:
//    10 s), and so does every query queued on it. Mended by clearing both where the
//    immediate is cancelled, as nextWrite() does after a flush.
// 2. A stale error response (porsager/postgres#1223). A FATAL error answering a statement
//    is kept for the ReadyForQuery that never comes; the next socket's first ReadyForQuery
//    then fails the connection's first query with the old backend's error. Mended by
//    forgetting it when the socket closes (its queries fail as CONNECTION_CLOSED).
// 3. Queries stranded by a reset (no upstream report found). On a reset socket 'error' comes
//    before 'close': error() fails the queries in flight, and a query issued in between (a
//    caller retrying at once) is queued behind the dead one. closed() fails what is queued
//    only when the close had no error, so those queries stay queued and the next socket
//    takes them for its own: they are never sent and never answered, and the connection
//    serves nothing more. Mended by failing whatever is queued on every close, and
//    forgetting the query in flight.
// 4. The array-type fetch's rejection is unhandled (porsager/postgres#1192, #1205). Every
//    new connection first reads the array types; when that statement fails, its promise
//    is dropped and the rejection ends the process (Bun and Node end on an unhandled
//    rejection). Mended by handling it: the same error has already failed the query that
//    opened the connection.
// 5. A clean close during startup spins (porsager/postgres#1193). A connection closed with
//    no error (a FIN: a proxy or load balancer with no PostgreSQL behind it, say) while its
//    first query waits reconnects at once, for ever, without failing the query: hundreds of
//    connection attempts a second, and the query pending until something answers. Mended by
//    failing the first query on such a close, unless the pool itself ended the connection
//    (to try the next host); the next query then reconnects after the backoff.
//
// and in src/index.js (the pool), for reservations (sql.reserve(), which tern's pipelined
// transactions use):
//
// 6. A waiting reservation dropped (porsager/postgres#1195). A reservation waits in the
//    pool's queue; when a connection closes, the pool hands the queue's head to that
//    connection's reconnect and takes it off the queue. Once the connection is up, it lets
//    a reservation go, expecting to serve it from the queue, where it no longer is: its
//    promise never settles. Mended by leaving a reservation on the queue when handing it on.
// 7. A failed reservation left on the queue. A reservation whose connection attempt failed
//    is rejected but stays queued: every later close hands it another connection attempt,
//    so while PostgreSQL is unreachable the live reservations wait behind dead ones until it
//    is back, and once it is, a connection is handed to the dead one and lost to the pool.
//    Mended by taking a rejected reservation off the queue.
// 9. Queued queries failed one per connection attempt. While PostgreSQL refuses connections,
//    each failed attempt fails the one query it was opened for, and the pool hands the next
//    queued one to the next attempt after the backoff: with 8 connections and a 1 s backoff,
//    the 64th of 64 waiting writes was answered after about 8 s (6.3 s in the test). Mended by
//    failing every queued query when a connection closes before it opened: the caller hears
//    at once (UNAVAILABLE), and the next query opens a connection again.
// 10. A query on a reservation whose connection closed (porsager/postgres#1208). A close
//    (pg_terminate_backend, a restart) ends the reservation in the pool (onclose: the
//    connection is closed, and reconnected at once for a queued query), but its holder may
//    still send on it: execute() then writes to the null socket, and the Sync it writes after
//    catching that TypeError is flushed from a setImmediate, where the TypeError is thrown
//    again, uncaught (which ends a Bun or Node process), the query never answered; or, once
//    the pool has reconnected the connection for someone else, into that other session.
//    release() likewise put such a connection back among the open ones. Mended by the
//    reservation keeping its own mark (c.reserved, which the close clears): a query after it
//    fails as CONNECTION_CLOSED, and release() leaves the connection to the pool.
// 12. A cancel request's promise dropped (src/query.js; no upstream report found). A query's
//    cancel() opens a connection that carries the cancel request to PostgreSQL, in a promise
//    that settles when PostgreSQL has taken it (resolve) or could not be reached (reject), and
//    answers null: the caller cannot wait for the request to arrive (tern gives a connection
//    back to the pool only after its cancels arrived, so a late one cannot reach the next
//    transaction on it), and a cancel that cannot reach PostgreSQL (a reset, an outage) is an
//    unhandled rejection, which ends a Bun or Node process. Mended by answering that promise.
//
// and one for speed, not a defect upstream would call one (src/index.js and src/queue.js):
//
// 8. Idle connections handed out oldest first. The pool takes the connection that has been
//    idle longest for each statement or reservation, so a stream of writes visits every
//    connection in turn and wakes a PostgreSQL backend asleep since its last turn. Mended by
//    taking the one that went idle last (a stack, not a queue): the same few backends serve
//    while the load allows, and the rest stay asleep. At 500 writes/s (bench:compare, 6 pairs)
//    the replication lag p99 was 0.70x, lower in 6 of 6, and PostgreSQL's CPU per event 0.93x
//    on A and 0.90x on B (bench/README.md, 2026-12-04, with the runs that disagree). Every
//    connection still opens when the load needs it, and postgres.js still retires each after
//    its max_lifetime.
//
// and in @connectrpc/connect 2.1.2 (dist/esm/protocol/serialization.js and its cjs build):
//
// 11. A request body that is no protobuf message answered INTERNAL. A handler decodes a binary
//    request before any interceptor runs, and a failure there is `[internal] parse binary:
//    premature EOF`, where a JSON body connect-es cannot decode is INVALID_ARGUMENT: a
//    client's bad bytes read as the server's defect, and tern's frontend, which never sees
//    the call, cannot map it. Mended by answering INVALID_ARGUMENT for the request's decode
//    only, naming the message ("cannot decode message tern.workflow.v1.X from binary: ...",
//    as the JSON one says it): the same serialization decodes a client's answers (a peer's
//    bad answer stays INTERNAL), and an error of a handler is not touched.
//
// and in @bufbuild/protobuf 2.13.0 (dist/esm/wire/base64-encoding.js and its commonjs build),
// for speed:
//
// 13. Base64 a character at a time. Connect's JSON codec writes and reads every bytes field
//    (a payload's data) through base64Encode and base64Decode, which build the string by
//    appending one character at a time and read it one character at a time. A JSON history
//    page of 3 MiB of payloads held a server's event loop for 2.2-3.3 s (a loaded machine),
//    and a megabyte signal sent as JSON for tens of ms. Mended by using the runtime's own
//    Uint8Array.prototype.toBase64 and Uint8Array.fromBase64 where it has them (Bun; not
//    Node 20, which keeps the loop): the same page then held it 0.38-0.97 s. A string the
//    native decoder refuses (the URL alphabet, inner padding) still goes through the loop,
//    which protobuf JSON allows. Upstream made the same change (bufbuild/protobuf-es#1477,
//    after 2.13.0), in releases whose code generator needs Node 22.
//
// and in dist/esm/wire/binary-encoding.js (and its commonjs build), for speed:
//
// 14. A nested message copied at every level. BinaryWriter writes a message field by
//    collecting the nested message's bytes (fork) and then, in join(), copying them into one
//    array before writing its length and that array into the parent: a payload's bytes are
//    copied once for each message around them, five times in a history page's answer
//    (history, event, attributes, payloads, payload) and once more for the whole answer.
//    toBinary of a page of three 1 MiB payloads took 12-42 ms. Mended by handing a nested
//    message of 16 KiB or more to its parent as the pieces it was written in, after its
//    length: its bytes are copied once, by the outermost finish(); 0.6-1.0 ms. Smaller ones
//    are joined as before, where one copy is cheaper than many pieces. Upstream rewrote the
//    writer around one growing buffer (bufbuild/protobuf-es#1108, in 2.14.0).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

// What to mend, and where (the numbers above): dependency-mends.json, which the server reads
// too, to refuse PostgreSQL with an unmended driver (src/persistence/driver-mends.ts).
const { mark: MARK, packages } = JSON.parse(readFileSync(join(root, "scripts", "dependency-mends.json"), "utf8"));

const occurrences = (text, s) => text.split(s).length - 1;

let failed = false;
const fail = (message) => {
  console.error(`patch-dependencies: ${message}`);
  failed = true;
};

// A mend whose text still holds what it replaces would be found still to mend by the next
// install, which then fails (mend 13's first version did): refused before anything is changed.
for (const p of packages) {
  for (const [name, mends] of Object.entries(p.mends)) {
    for (const m of mends) {
      if (occurrences(`${m.to}${MARK}\n${m.keep ?? ""}`, m.from)) fail(`${p.name}/${name}: mend ${JSON.stringify(m.where)} keeps the text it replaces (${JSON.stringify(m.from)}), so every later install would find it still to mend`);
    }
  }
}
if (failed) process.exit(1);

for (const p of packages) {
  const dir = join(root, "node_modules", p.name);
  if (!existsSync(join(dir, "package.json"))) {
    fail(`${p.name} is not installed under ${dir}; nothing mended`);
    continue;
  }
  const { version } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  if (version !== p.version) {
    fail(`${p.name} is ${version}, the mends are for ${p.version}: check whether ${version} still has the defects described in scripts/patch-dependencies.mjs, then update or drop them`);
    continue;
  }
  const files = p.builds.flatMap((build) => Object.entries(p.mends).map(([name, mends]) => [`${build}/${name}`, mends]));
  for (const [file, mends] of files) {
    const path = join(dir, file);
    let text = readFileSync(path, "utf8");
    let changed = false;
    for (const m of mends) {
      const mended = `${m.to}${MARK}\n${m.keep ?? ""}`;
      const found = occurrences(text, m.from);
      const already = occurrences(text, mended);
      if (found === 0 && already === m.count) continue;
      if (found !== m.count || already !== 0) {
        fail(`${p.name}/${file} does not read as expected (${found} places to mend, ${already} mended, want ${m.count}: ${JSON.stringify(m.from)}); not changed`);
        continue;
      }
      text = text.split(m.from).join(mended);
      changed = true;
    }
    if (changed) {
      writeFileSync(path, text);
      console.log(`patch-dependencies: mended ${p.name}/${file}`);
    }
  }
}
if (failed) process.exit(1);
