/** One-line error reporting for the CLI: no stack traces for mistakes a user can fix. */

/** An error in what the user asked for (bad option value, missing file). */
export class UsageError extends Error {}

/** Prints `kvmtalk: <first line of the message>` and exits 1; KVMTALK_DEBUG=1 adds the stack. */
export function reportError(e: unknown): never {
  const err = e instanceof Error ? e : new Error(String(e));
  process.stderr.write(`kvmtalk: ${err.message.split('\n')[0]}\n`);
  if (process.env.KVMTALK_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
}
