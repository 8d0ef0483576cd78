/**
 * Resolves on the event loop's next turn, once the I/O already in hand has been handled (a
 * batch of commits whose answers arrived together, a stream's messages read in one chunk):
 * setImmediate where the runtime has it (Bun, Node; about 4 µs here), else a timer (Deno's
 * setTimeout(0), about 1 ms).
 */
export function nextTurn(): Promise<void> {
  const immediate = (globalThis as { setImmediate?: (f: () => void) => unknown }).setImmediate;
  return new Promise((resolve) => (immediate ? immediate(resolve) : setTimeout(resolve, 0)));
}
