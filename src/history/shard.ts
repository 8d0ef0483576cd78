/** 32-bit FNV-1a over UTF-8 bytes: stable across runtimes and restarts. */
export function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** History shard of an execution, 1..shardCount (DESIGN.md section 3). */
export function shardFor(namespaceId: string, workflowId: string, shardCount: number): number {
  return (fnv1a32(`${namespaceId}_${workflowId}`) % shardCount) + 1;
}
