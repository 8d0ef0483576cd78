/** How much of a client's input an error message shows whole: past the longest name (255) or address tern takes. */
export const SHOWN_MAX = 300;

/**
 * A client's input as an error message shows it: whole up to max characters (JSON-quoted when
 * quote), else JSON-quoted, its first max characters, an ellipsis and its full length. A request
 * may carry a name or an address of up to the request size limit (megabytes), and a message
 * quoting it whole went back to the caller and into the 'rpc failed' log line.
 */
export function shown(input: string, { quote = false, max = SHOWN_MAX }: { quote?: boolean; max?: number } = {}): string {
  if (input.length <= max) return quote ? JSON.stringify(input) : input;
  // A prefix ending between a surrogate pair's halves would show a lone \ud83d escape.
  const end = isHighSurrogate(input.charCodeAt(max - 1)) ? max - 1 : max;
  return `${JSON.stringify(`${input.slice(0, end)}…`)} (${input.length} characters)`;
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

/**
 * A URL or address, parsed or not, without its password: all from the user's colon to the last
 * @ is ***. A password with a raw / ? # (which break a URL) or @ was shown from there on by a
 * parser's split; a path or query with an @ in it is hidden too, which a message can spare.
 */
export function withoutPassword(address: string): string {
  const scheme = address.indexOf("://");
  const start = scheme < 0 ? 0 : scheme + 3;
  const at = address.lastIndexOf("@");
  const colon = address.indexOf(":", start);
  return colon >= 0 && colon < at ? `${address.slice(0, colon + 1)}***${address.slice(at)}` : address;
}
