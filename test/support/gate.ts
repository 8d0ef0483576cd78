/** A gate a test closes to hold some work (an apply's commit, a flush, a stream's messages) and opens to let it go. */
export function createGate() {
  let held: Promise<void> | undefined;
  let open = () => {};
  return {
    /** While closed, what the held work waits for; undefined while open. */
    get held(): Promise<void> | undefined {
      return held;
    },
    close(): void {
      held = new Promise((r) => (open = () => ((held = undefined), r())));
    },
    open: () => open(),
  };
}
