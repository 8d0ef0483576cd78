import type { Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { formatMillis, parseDurationNanos } from "./duration";
import { withoutPassword } from "../shown";
import { MAX_TIMER_MS } from "../sleep";
import { CliError, UsageError } from "./errors";

/**
 * How long a call may go unanswered by default: past any wait a plain call has on the server
 * (a write waits out a HANDOVER for 5 s), short enough that a frozen server or a network
 * that drops every packet is reported rather than waited on for good.
 */
export const DEFAULT_RPC_TIMEOUT_MS = 30_000;

/** The server's hold of a history long poll the CLI asks for (`workflow show --follow`). */
export const FOLLOW_WAIT_MS = 20_000;

/**
 * The work a namespace delete or a DLQ merge or purge may do (a whole namespace, a whole DLQ)
 * before its deadline; and each page of a verify (a page of checksums from a peer of an older
 * build digests its runs whole, and the server waits that long for it).
 */
export const LONG_RUN_MS = 600_000;

/** The server's wait for a graceful failover's catch-up when --timeout is not given. */
export const FAILOVER_WAIT_MS = 10_000;


/** A Duration in whole milliseconds, rounded up. */
export function millisOf(d: Duration): number {
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1e6);
}

/** --rpc-timeout in milliseconds (0: no deadline); throws UsageError naming the flag. */
export function parseRpcTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_RPC_TIMEOUT_MS;
  const nanos = parseDurationNanos(text, "rpc-timeout");
  // A nonzero deadline under 1 ms would round to 0, which means none.
  const ms = nanos === 0n ? 0 : Math.max(1, Math.ceil(Number(nanos) / 1e6));
  // Taken as none before, silently: a timer cannot wait longer.
  if (ms > MAX_TIMER_MS) throw new UsageError(`--rpc-timeout: ${text} is longer than the longest deadline, ${MAX_TIMER_MS} ms (about 24.8 days; 0 for none)`);
  return ms;
}

/**
 * The transport with a deadline on every unary call: a call's own timeoutMs (a long-running
 * command's, 0 for none) or defaultMs (0: none). A call that runs out of it fails with a
 * CliError naming the address and the deadline, not Connect's "the operation timed out".
 */
export function withDeadline(transport: Transport, address: string, defaultMs: number): Transport {
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      // A longer timer would fire at once (Node and Bun take it for 1 ms).
      const asked = timeoutMs ?? defaultMs;
      const ms = asked > MAX_TIMER_MS ? 0 : asked;
      const began = Date.now();
      try {
        return await transport.unary(method, signal, ms > 0 ? ms : undefined, header, input, contextValues);
      } catch (e) {
        // Ours, whether our timer fired or the server answered at the deadline we sent; a
        // DEADLINE_EXCEEDED the server gave earlier is its own (a remote's) and keeps its words.
        if (ms > 0 && e instanceof ConnectError && e.code === Code.DeadlineExceeded && Date.now() - began >= ms - 50) {
          throw new CliError(`tern at ${withoutPassword(address)} did not answer within ${formatMillis(ms)} (the call's deadline; --rpc-timeout sets it, 0 for none)`);
        }
        throw e;
      }
    },
    // The CLI opens no stream; one would be a follow, which ends when its server ends it.
    stream: (method, signal, timeoutMs, header, input, contextValues) => transport.stream(method, signal, timeoutMs, header, input, contextValues),
  };
}
