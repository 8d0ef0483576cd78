/** One page as the list RPCs return it. */
export interface Page<T> {
  items: T[];
  nextPageToken: Uint8Array;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Calls fetchPage with each next_page_token until the server returns an empty one,
 * collecting the items; stops early at limit. A server that hands back the same token
 * with no items would loop forever, so that also ends the walk.
 */
export async function collectPages<T>(
  fetchPage: (token: Uint8Array) => Promise<Page<T>>,
  limit = Number.POSITIVE_INFINITY,
): Promise<T[]> {
  const items: T[] = [];
  let token: Uint8Array = new Uint8Array(0);
  while (items.length < limit) {
    const page = await fetchPage(token);
    items.push(...page.items);
    if (page.nextPageToken.length === 0) break;
    if (page.items.length === 0 && sameBytes(page.nextPageToken, token)) break;
    token = page.nextPageToken;
  }
  return items.length > limit ? items.slice(0, limit) : items;
}
