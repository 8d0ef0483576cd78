/**
 * Bundles the Node and Deno entries: `bun scripts/build-runtimes.ts` writes
 * dist/node/tern.mjs, dist/deno/tern.mjs and a copy of drizzle/ in dist/drizzle.
 *
 * PGlite and postgres stay external, resolved from node_modules at run time: PGlite
 * loads its wasm and data files relative to its own module, which a bundle would move.
 */
import { cpSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const outRoot = `${root}dist`;

/** Packages left as bare imports in the bundles. */
export const EXTERNAL = ["@electric-sql/pglite", "postgres"];

/** One bundle per runtime; both are plain ESM for Node's module loader. */
export const TARGETS = [
  { runtime: "node", entry: "src/entry/node.ts" },
  { runtime: "deno", entry: "src/entry/deno.ts" },
] as const;

/** Builds every runtime bundle into dist/; throws with Bun's messages on failure. */
export async function buildRuntimes(): Promise<string[]> {
  rmSync(outRoot, { recursive: true, force: true });
  const outputs: string[] = [];
  for (const { runtime, entry } of TARGETS) {
    const result = await Bun.build({
      entrypoints: [`${root}${entry}`],
      outdir: `${outRoot}/${runtime}`,
      naming: "tern.mjs",
      target: "node",
      format: "esm",
      external: EXTERNAL,
      sourcemap: "linked",
    });
    if (!result.success) throw new AggregateError(result.logs, `bundling ${entry} failed:\n${result.logs.join("\n")}`);
    outputs.push(...result.outputs.filter((o) => o.kind === "entry-point").map((o) => o.path));
  }
  // The bundles find drizzle/ by walking up from themselves: dist/drizzle comes first.
  cpSync(`${root}drizzle`, `${outRoot}/drizzle`, { recursive: true });
  return outputs;
}

if (import.meta.main) {
  const started = performance.now();
  const outputs = await buildRuntimes();
  console.log(`built ${outputs.map((o) => o.slice(root.length)).join(", ")} in ${Math.round(performance.now() - started)} ms`);
}
