import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import mends from "../../scripts/dependency-mends.json";

/**
 * What is wrong with the postgres.js tern would run with, or undefined when it carries every
 * mend of scripts/patch-dependencies.mjs (npm's postinstall). Without them, losing PostgreSQL
 * can leave queries waiting for good or end the process, and the pool wakes a backend asleep
 * since its last turn for each statement: an install with `--ignore-scripts`
 * goes without them, and so does a postgres bumped by hand. dir is the package's directory,
 * by default the one `import "postgres"` loads.
 */
export function driverMendsMissing(dir: string | undefined = installedDir("postgres")): string | undefined {
  return mendsMissing("postgres", dir);
}

/**
 * What is wrong with the installed package name against its mends in scripts/dependency-mends.json,
 * or undefined when it carries every one. dir is the package's directory, by default the one a bare
 * import of name loads.
 */
export function mendsMissing(name: string, dir: string | undefined = installedDir(name)): string | undefined {
  const pkg = mends.packages.find((p) => p.name === name);
  if (!pkg) throw new Error(`scripts/dependency-mends.json has no mends for ${name}`);
  // A runtime that cannot say where the package is (import.meta.resolve) is not checked.
  if (!dir) return undefined;
  const { version } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { version: string };
  if (version !== pkg.version) return `${pkg.name} ${version} is installed; tern's mends are for ${pkg.version}`;
  const missing: string[] = [];
  for (const build of pkg.builds) {
    for (const [file, fileMends] of Object.entries(pkg.mends)) {
      const text = readFileSync(join(dir, build, file), "utf8");
      for (const m of fileMends as { where: string; to: string; keep?: string; count: number }[]) {
        const mended = `${m.to}${mends.mark}\n${m.keep ?? ""}`;
        if (text.split(mended).length - 1 !== m.count) missing.push(`${build}/${file} (mend ${m.where})`);
      }
    }
  }
  return missing.length ? `${pkg.name} ${version} lacks tern's mends in ${missing.join(", ")}` : undefined;
}

/** The directory of the package a bare import of name loads (its package.json's), if it can be found. */
function installedDir(name: string): string | undefined {
  let entry: string;
  try {
    entry = fileURLToPath(import.meta.resolve(name));
  } catch {
    return undefined;
  }
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json")) && (JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string }).name === name) return dir;
  }
  return undefined;
}

let checked: string | undefined | null = null;

/** Throws when driverMendsMissing finds something; it looks once per process. */
export function requireMendedDriver(): void {
  if (checked === null) checked = driverMendsMissing();
  if (checked) {
    throw new Error(
      `${checked}: without them, losing PostgreSQL can leave requests waiting for good, and the pool wakes more PostgreSQL backends than it needs (scripts/patch-dependencies.mjs lists each). ` +
        "Run `node scripts/patch-dependencies.mjs` in tern's directory (npm runs it after `npm install`, unless with --ignore-scripts), then start again",
    );
  }
}
