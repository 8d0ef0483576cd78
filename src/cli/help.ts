import type { FlagSpec } from "./args";
import { type Command, globalFlagsOf, type GroupCommand, type LeafCommand } from "./command";

/** Help text for any node of the command tree; path is the words after "tern". */
export function renderHelp(command: Command, path: readonly string[]): string {
  return command.kind === "group" ? renderGroupHelp(command, path) : renderLeafHelp(command, path);
}

function renderGroupHelp(group: GroupCommand, path: readonly string[]): string {
  const name = ["tern", ...path].join(" ");
  const width = Math.max(...group.commands.map((c) => c.name.length));
  const lines = [
    group.summary,
    "",
    "Usage:",
    `  ${name} <command> [flags]`,
    "",
    "Commands:",
    ...group.commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "Global flags:",
    ...renderFlags(globalFlagsOf(group)),
    "",
    `Run '${name} <command> --help' for more about a command${path.length === 0 ? " (or 'tern help <command>'); 'tern --version' prints this CLI's version." : "."}`,
  ];
  return lines.join("\n") + "\n";
}

function renderLeafHelp(leaf: LeafCommand, path: readonly string[]): string {
  const name = ["tern", ...path].join(" ");
  const usage = `  ${name}${leaf.positionals ? ` ${leaf.positionals}` : ""} [flags]`;
  const lines = [leaf.summary, "", "Usage:", usage];
  if (leaf.flags.length > 0) lines.push("", "Flags:", ...renderFlags(leaf.flags));
  lines.push("", "Global flags:", ...renderFlags(globalFlagsOf(leaf)));
  if (leaf.details) lines.push("", leaf.details.trimEnd());
  return lines.join("\n") + "\n";
}

/** Flag lines: `  -n, --namespace NS   description (default "x")`, aligned. */
export function renderFlags(flags: readonly FlagSpec[]): string[] {
  const left = flags.map((f) => {
    const names = `${f.alias ? `-${f.alias}, ` : "    "}--${f.name}`;
    const value = f.kind === "string" ? ` ${f.valueName ?? "string"}` : "";
    return names + value;
  });
  const width = Math.max(...left.map((l) => l.length));
  return flags.map((f, i) => {
    const extras = [
      f.repeated ? "repeatable" : "",
      f.defaultText !== undefined ? `default "${f.defaultText}"` : "",
    ].filter(Boolean);
    const suffix = extras.length > 0 ? ` (${extras.join(", ")})` : "";
    return `  ${left[i]!.padEnd(width)}   ${f.description}${suffix}`;
  });
}
